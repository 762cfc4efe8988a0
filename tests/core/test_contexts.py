"""Cached training contexts (memoir_core/contexts.py): a row that starts from a cached context
sees exactly what it would see after the context's tokens, and a batch left-pads the contexts."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from memoir_core.contexts import ContextCache
from memoir_core.kvcache import CACHE_KW
from tests.support.tiny import tiny_model, tiny_tokenizer


def test_a_row_on_a_cached_context_matches_the_whole_text():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    context = tok("the quick brown fox").input_ids
    own = tok(" jumps over the lazy dog").input_ids
    contexts = ContextCache(model, [[], context])
    assert len(contexts) == 2 and contexts.length(0) == 0 and contexts.length(1) == len(context)
    assert contexts.index(context) == 1 and contexts.index([]) == 0 and contexts.index(own) is None

    layers, mask = contexts.batch([1])
    assert mask.tolist() == [[1] * len(context)]
    p, t = len(context), len(own)
    with torch.inference_mode():
        whole = model(input_ids=torch.tensor([context + own])).logits[0, p:]
        cached = model(input_ids=torch.tensor([own]), attention_mask=torch.ones(1, p + t, dtype=torch.long),
                       position_ids=torch.arange(p, p + t)[None],
                       **{CACHE_KW: DynamicCache(ddp_cache_data=layers)}, use_cache=True).logits[0]
    assert torch.allclose(cached, whole, atol=1e-4)


def test_a_batch_left_pads_contexts_of_different_lengths():
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    short, long = tok("paris").input_ids, tok("the quick brown fox jumps").input_ids
    contexts = ContextCache(model, [[], short, long])
    layers, mask = contexts.batch([0, 1, 2])
    width = len(long)
    assert mask.shape == (3, width)
    assert mask[0].sum() == 0 and mask[1].tolist() == [0] * (width - len(short)) + [1] * len(short)
    assert mask[2].tolist() == [1] * width
    alone, _ = contexts.batch([1])
    for (k, v), (k1, v1) in zip(layers, alone, strict=True):
        assert k.shape[0] == 3 and k.shape[2] == width
        start = width - len(short)
        assert torch.equal(k[1, :, start:], k1[0]) and torch.equal(v[1, :, start:], v1[0])
        assert not k[0].any() and not k[1, :, : width - len(short)].any()
    none, none_mask = contexts.batch([0, 0])  # no context at all: no cache, an empty mask
    assert none is None and none_mask.shape == (2, 0)
