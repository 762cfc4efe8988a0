"""The torch best match (devicebank.py, what a GPU runs) gives the numba scan's answers exactly."""

import numpy as np
import pytest
import torch

from memoir_core.devicebank import CHUNK, DeviceMaskBank, popcount
from memoir_core.maskbank import MaskBank


def test_popcount_of_every_bit_pattern_kind():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**64, size=4096, dtype=np.uint64)
    words[:4] = [0, 2**64 - 1, 2**63, 2**63 - 1]  # the sign bit alone, and every bit but it
    got = popcount(torch.from_numpy(words.view(np.int64))).numpy()
    assert np.array_equal(got, np.bitwise_count(words))


@pytest.mark.parametrize("width,k", [(1536, 438), (100, 7)])  # the default model's D and k; D not a multiple of 64
def test_best_equals_the_numba_scan(width, k):
    rng = np.random.default_rng(width)
    bank = MaskBank(width, k)
    masks = [np.sort(rng.choice(width, size=k, replace=False)) for _ in range(3000)]
    for i, m in enumerate(masks):
        bank.add(f"e{i}", m)
    bank.add("twin", masks[10])  # a tie with e10: both scans must name the first slot
    bank.add("keys", np.stack([masks[20], masks[30]]))  # an id holding several masks
    device = DeviceMaskBank.of(bank, "cpu")
    queries = np.stack([masks[10], masks[20], masks[2999]] +
                       [np.sort(rng.choice(width, size=k, replace=False)) for _ in range(5)])
    for rank in (1, 8):
        assert device.best(queries, rank=rank) == bank.best(queries, rank=rank)
    assert device.best(queries[:1])[0].edit_id == "e10"
    for q in queries:
        assert np.array_equal(device.counts(q), bank.counts(q))


def test_banks_longer_than_one_pass_and_empty_ones():
    width, k = 64, 5
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**64, size=(CHUNK + 3, 1), dtype=np.uint64)
    bits[-1] = np.uint64(2**64 - 1)  # the only row with all 64 bits, in the last pass
    ids = [f"e{i}" for i in range(len(bits))]
    bank, device = MaskBank.restore(width, k, ids, bits), DeviceMaskBank(width, k, ids, bits, "cpu")
    q = np.arange(k)
    assert device.best(q[None], rank=3) == bank.best(q[None], rank=3)
    assert np.array_equal(device.counts(q), bank.counts(q))
    empty = DeviceMaskBank.of(MaskBank(width, k), "cpu")
    assert empty.best(q[None]) == MaskBank(width, k).best(q[None])
