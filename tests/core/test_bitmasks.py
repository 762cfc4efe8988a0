"""Packed column masks (memoir_core/bitmasks.py): what a record keeps of its avoid masks."""

from __future__ import annotations

import binascii

import numpy as np
import pytest

from memoir_core import bitmasks


def test_packed_masks_give_back_their_columns_and_score_as_sets_do():
    rng = np.random.default_rng(0)
    masks = [np.sort(rng.choice(1536, 440, replace=False)) for _ in range(12)]
    packed = bitmasks.pack(masks)
    assert packed.dtype == np.uint64 and packed.shape[0] == 12 and packed.nbytes <= 12 * 192
    assert bitmasks.columns(packed) == [m.tolist() for m in masks]
    query = rng.choice(1536, 440, replace=False)
    expected = [len(set(m.tolist()) & set(query.tolist())) for m in masks]
    assert bitmasks.overlaps(packed, query).tolist() == expected
    # a query column past every packed mask's bytes counts for nothing and does not fail
    short = bitmasks.pack([[0, 3, 9]])
    assert short.shape == (1, 1)
    assert bitmasks.overlaps(short, [3, 9, 1500]).tolist() == [2]


def test_stored_masks_read_back_from_text_or_from_column_lists():
    packed = bitmasks.pack([[1, 2, 700], [5, 6, 1535]])
    text = bitmasks.encode(packed)
    assert all(isinstance(t, str) for t in text) and sum(map(len, text)) < 2 * 300
    assert np.array_equal(bitmasks.decode(text), packed)
    assert np.array_equal(bitmasks.decode([[1, 2, 700], [5, 6, 1535]]), packed)
    assert bitmasks.decode([]).shape == (0, 0)
    assert len(bitmasks.overlaps(bitmasks.decode([]), [1, 2])) == 0


def test_damaged_stored_masks_are_refused_not_misread():
    with pytest.raises(binascii.Error):
        bitmasks.decode(["not base64!"])
    with pytest.raises(ValueError, match="same length"):
        bitmasks.decode([bitmasks.encode(bitmasks.pack([[1]]))[0], bitmasks.encode(bitmasks.pack([[900]]))[0]])
    with pytest.raises(ValueError, match="same number"):
        bitmasks.pack([[1, 2], [3]])
    with pytest.raises(ValueError, match="0 or more"):
        bitmasks.pack([[-1, 2]])


def test_the_registry_refuses_avoid_masks_of_the_wrong_size_or_width():
    from memoir_core.store.registry import Registry, RegistryError
    from tests.support.tiny import make_memoir

    m = make_memoir("llama", max_steps=2, subject_tau=0.0, other_question_lead=0.0)
    rec = m.edit("Who is the chief of Acme Corp?", "jane roe", subject="Acme Corp")
    registry = Registry(m.config.k, m.d_out, m.width)
    registry.check(rec)  # as made
    good = bitmasks.columns(rec.avoid)
    short = rec.avoid.copy()
    j = int(np.flatnonzero(short[0])[0])
    short[0, j] &= short[0, j] - np.uint64(1)  # its lowest column cleared: k - 1 columns
    past = bitmasks.pack([g[1:] + [m.width] for g in good])  # the first column swapped for one past the width
    for bad in (short, past):
        rec.avoid = bad
        with pytest.raises(RegistryError, match="avoid"):
            registry.check(rec)
