import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoir_core.maskbank import MaskBank, pack, unpack


def random_mask(rng, width, k):
    return np.sort(rng.choice(width, size=k, replace=False))


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(0)
    m = random_mask(rng, 1536, 440)
    assert np.array_equal(unpack(pack(m, 1536)[0], 1536), m)
    assert pack(m, 1536).shape == (1, 24)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_best_match_equals_brute_force(n, seed):
    rng = np.random.default_rng(seed)
    width, k = 200, 40
    bank = MaskBank(width, k)
    masks = {}
    for i in range(n):
        masks[f"e{i}"] = random_mask(rng, width, k)
        bank.add(f"e{i}", masks[f"e{i}"])
    query = random_mask(rng, width, k)
    overlaps = {eid: len(np.intersect1d(m, query)) / k for eid, m in masks.items()}
    match = bank.best(query[None])[0]
    assert match.overlap == pytest.approx(max(overlaps.values()))
    assert overlaps[match.edit_id] == pytest.approx(match.overlap)


def test_remove_keeps_the_rest_findable():
    rng = np.random.default_rng(1)
    bank = MaskBank(300, 30, capacity=2)  # forces growth
    masks = {f"e{i}": random_mask(rng, 300, 30) for i in range(10)}
    for eid, m in masks.items():
        bank.add(eid, m)
    for eid in ("e0", "e5", "e9"):
        bank.remove(eid)
        del masks[eid]
    assert len(bank) == 7
    for eid, m in masks.items():
        match = bank.best(m[None])[0]
        assert (match.edit_id, match.overlap) == (eid, 1.0)
        assert np.array_equal(bank.mask_of(eid), m)
    with pytest.raises(KeyError):
        bank.add("e1", masks["e1"])


def test_empty_bank_matches_nothing():
    bank = MaskBank(128, 16)
    match = bank.best(np.arange(16)[None])[0]
    assert match.edit_id is None and match.overlap == 0.0


def test_bytes_per_mask_for_default_model_width():
    assert MaskBank(1536, 440).bytes_per_mask == 192


def test_several_masks_per_id_are_added_matched_and_removed_together():
    rng = np.random.default_rng(2)
    bank = MaskBank(256, 32)
    keys = {f"e{i}": np.stack([random_mask(rng, 256, 32) for _ in range(1 + i % 3)]) for i in range(9)}
    for eid, ms in keys.items():
        bank.add(eid, ms)
    assert len(bank) == sum(len(m) for m in keys.values())
    for eid in ("e1", "e4", "e8"):
        bank.remove(eid)
        del keys[eid]
    assert len(bank) == sum(len(m) for m in keys.values())
    for eid, ms in keys.items():
        for m in ms:  # every key of a live edit still finds it
            match = bank.best(m[None])[0]
            assert (match.edit_id, match.overlap) == (eid, 1.0)


class _SameHash(str):
    """An id whose hash collides with every other _SameHash id."""

    def __hash__(self):
        return 7


def test_ids_whose_hashes_collide_stay_apart():
    rng = np.random.default_rng(3)
    bank = MaskBank(256, 32)
    a, b = _SameHash("edit-a"), _SameHash("edit-b")
    ma, mb = random_mask(rng, 256, 32), random_mask(rng, 256, 32)
    bank.add(a, ma)
    assert b not in bank
    bank.add(b, mb)
    assert np.array_equal(bank.mask_of(a), ma) and np.array_equal(bank.mask_of(b), mb)
    bank.remove(a)
    assert a not in bank and b in bank
    assert bank.best(mb[None])[0].edit_id == "edit-b"
    with pytest.raises(KeyError):
        bank.remove(a)


def test_restored_bank_finds_adds_and_removes_like_the_original():
    rng = np.random.default_rng(4)
    bank = MaskBank(256, 32)
    masks = {f"e{i}": np.stack([random_mask(rng, 256, 32) for _ in range(1 + i % 2)]) for i in range(6)}
    for eid, ms in masks.items():
        bank.add(eid, ms)
    again = MaskBank.restore(256, 32, *bank.export())
    assert again.ids == bank.ids and "e3" in again and "e9" not in again
    again.remove("e3")
    again.add("e9", masks["e3"][0])
    assert again.best(masks["e3"][0][None])[0].edit_id == "e9"
    assert np.array_equal(again.mask_of("e5"), masks["e5"][0])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_the_runner_up_is_the_rank_th_best_overlap_and_ties_keep_the_first(n, rank, seed):
    from memoir_core import maskbank

    rng = np.random.default_rng(seed)
    width, k = 64, 8  # narrow: many equal overlaps
    bank = MaskBank(width, k)
    masks = [random_mask(rng, width, k) for _ in range(n)]
    for i, m in enumerate(masks):
        bank.add(f"e{i}", m)
    query = random_mask(rng, width, k)
    counts = np.array([len(np.intersect1d(m, query)) for m in masks])
    ranked = np.sort(counts)[::-1]
    expected_runner_up = ranked[rank - 1] / k if rank <= n else 0.0
    match = bank.best(query[None], rank=rank)[0]
    assert match.edit_id == f"e{int(counts.argmax())}"  # the first of equal bests, as argmax
    assert match.runner_up == pytest.approx(expected_runner_up)
    assert bank.top_overlaps(query, 3) == pytest.approx(np.append(ranked, [0, 0, 0])[:3] / k)
    # the numpy path (no numba, or banks scanned in parallel) agrees
    with_numba = maskbank.HAVE_NUMBA
    try:
        maskbank.HAVE_NUMBA = False
        assert bank.best(query[None], rank=rank)[0] == match
    finally:
        maskbank.HAVE_NUMBA = with_numba
    assert MaskBank(width, k).best(query[None], rank=rank)[0].runner_up == 0.0
