"""Joining and trimming KV caches of left-padded batches (memoir_core/kvcache.py): what continuous
batching does when a sequence joins the running batch or leaves it."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from memoir_core import kvcache


def cache(batch: int, length: int, seed: int, layers: int = 2) -> DynamicCache:
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(batch, 2, length, 4, generator=g), torch.randn(batch, 2, length, 4, generator=g))
            for _ in range(layers)]
    return DynamicCache(ddp_cache_data=data)


def test_join_left_pads_the_shorter_batch():
    a, b = cache(1, 3, 0), cache(2, 5, 1)
    mask_a, mask_b = torch.ones(1, 3, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    joined, mask = kvcache.join(a, mask_a, b, mask_b)
    assert kvcache.joinable(joined) and mask.tolist() == [[0, 0, 1, 1, 1], [1] * 5, [1] * 5]
    for la, lb, lj in zip(a.layers, b.layers, joined.layers, strict=True):
        assert lj.keys.shape == (3, 2, 5, 4)
        assert torch.equal(lj.keys[0, :, 2:], la.keys[0]) and torch.equal(lj.values[0, :, 2:], la.values[0])
        assert not lj.keys[0, :, :2].any()  # the padding holds nothing
        assert torch.equal(lj.keys[1:], lb.keys) and torch.equal(lj.values[1:], lb.values)


def test_select_keeps_rows_and_drops_columns_that_are_padding_in_all_of_them():
    a, b = cache(1, 3, 0), cache(1, 5, 1)
    joined, mask = kvcache.join(a, torch.ones(1, 3, dtype=torch.long), b, torch.ones(1, 5, dtype=torch.long))
    kept, kept_mask = kvcache.select(joined, mask, torch.tensor([0]))  # the short one alone: back to 3
    assert kept_mask.tolist() == [[1, 1, 1]]
    for la, lk in zip(a.layers, kept.layers, strict=True):
        assert torch.equal(lk.keys, la.keys) and torch.equal(lk.values, la.values)
    both, both_mask = kvcache.select(joined, mask, torch.tensor([1, 0]))  # reordered, nothing to drop
    assert both_mask.tolist() == [[1] * 5, [0, 0, 1, 1, 1]]
    assert torch.equal(both.layers[0].keys[0], b.layers[0].keys[0])
