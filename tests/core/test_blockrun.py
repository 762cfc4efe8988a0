"""Running a model from one block on (memoir_core/blockrun.py): `capture` stops at block L with the
projection's input and the block's output, and `replay_from` runs blocks L+1.. from a given output,
exactly as the whole model would, then puts the blocks back."""

from __future__ import annotations

import pytest
import torch

from memoir_core import arch
from memoir_core.blockrun import capture, replay_from
from tests.support.tiny import tiny_model, tiny_tokenizer

LAYER = 2


def parts(kind: str):
    tok = tiny_tokenizer()
    model = tiny_model(kind, len(tok))
    spec = arch.spec_for(model)
    blocks = arch.get_path(model, spec.blocks)
    return model, blocks, arch.get_path(blocks[LAYER], spec.down), tok("who is the chief executive").input_ids


@pytest.mark.parametrize("kind", ["llama", "gptj"])  # GPT-J's blocks return tuples
def test_capture_then_replay_gives_the_whole_models_output(kind):
    model, blocks, down, ids = parts(kind)
    inputs = {"input_ids": torch.tensor([ids])}
    with torch.inference_mode():
        full = model(**inputs, use_cache=False, output_hidden_states=True)
    acts, out = capture(model.base_model, blocks, LAYER, down, **inputs)
    assert acts.shape == (1, len(ids), arch.projection_shape(down, False)[0])
    assert torch.allclose(out, full.hidden_states[LAYER + 1], atol=1e-5)  # block L's output
    originals = list(blocks)
    with torch.inference_mode(), replay_from(blocks, LAYER, out):
        replayed = model(**inputs, use_cache=False).logits
    assert torch.allclose(replayed, full.logits, atol=1e-4)
    assert all(a is b for a, b in zip(blocks, originals, strict=True))  # the swap is undone
    with torch.inference_mode(), replay_from(blocks, LAYER, out + 1.0):
        changed = model(**inputs, use_cache=False).logits
    assert not torch.allclose(changed, full.logits)  # the given output is what the later blocks read


def test_replay_puts_the_blocks_back_after_an_error():
    model, blocks, _, _ = parts("llama")
    originals = list(blocks)
    with pytest.raises(RuntimeError), replay_from(blocks, LAYER, torch.zeros(1, 3, 64)):
        assert blocks[0] is not originals[0]
        raise RuntimeError("the forward failed")
    assert all(a is b for a, b in zip(blocks, originals, strict=True))
