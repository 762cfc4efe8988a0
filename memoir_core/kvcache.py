"""Joining and trimming Hugging Face KV caches of left-padded batches (continuous batching).

Only plain full-attention caches (DynamicLayer) can be joined; sliding-window and other
layer kinds report `joinable() == False` and their batches run to completion instead.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.models.llama.modeling_llama import LlamaModel

# The forward keyword that takes a cache: `cache` from transformers 5.24 on, `past_key_values`
# before (5.17, the GPU image's). 5.24 still takes the old name, with a deprecation warning on
# every call, and drops it in 5.40; a name a model does not know would be swallowed by its
# **kwargs, and every cached generation would silently recompute nothing but its last token.
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def joinable(cache: DynamicCache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if n == 0 else F.pad(t, (0, 0, n, 0))


def join(a: DynamicCache, mask_a: torch.Tensor, b: DynamicCache, mask_b: torch.Tensor):
    """Stack two batches' caches and 2-D attention masks, left-padding the shorter one."""
    ta, tb = mask_a.shape[1], mask_b.shape[1]
    t = max(ta, tb)
    data = []
    for la, lb in zip(a.layers, b.layers):
        keys = torch.cat([_pad_left(la.keys, t - ta), _pad_left(lb.keys, t - tb)])
        values = torch.cat([_pad_left(la.values, t - ta), _pad_left(lb.values, t - tb)])
        data.append((keys, values))
    mask = torch.cat([F.pad(mask_a, (t - ta, 0)), F.pad(mask_b, (t - tb, 0))])
    return DynamicCache(ddp_cache_data=data), mask


def select(cache: DynamicCache, mask: torch.Tensor, rows: torch.Tensor):
    """Keep `rows` and drop leading columns that are padding in every kept row."""
    mask = mask.index_select(0, rows)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else mask.shape[1]
    data = [
        (layer.keys.index_select(0, rows)[:, :, start:], layer.values.index_select(0, rows)[:, :, start:])
        for layer in cache.layers
    ]
    return DynamicCache(ddp_cache_data=data), mask[:, start:]
