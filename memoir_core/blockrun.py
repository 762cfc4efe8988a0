"""Running a Hugging Face model from one block on, generically.

An edit's optimisation only changes the output of block L, so the hidden states up to it are
computed once (`capture`) and every optimisation step runs only blocks L+1.. (`replay_from`).
Both work by temporarily swapping modules in the model's block list, not by re-implementing
any architecture's forward: the model's own forward still builds masks, positions and norms.
The model must not run anywhere else while a swap is in place (one thread owns the model).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn


class _Stop(Exception):
    pass


# Block classes seen (by capture, which every replay follows) to return a tuple: GPT-J's in
# transformers 5.17 returns (hidden, attn_weights) and its model takes [0] of whatever a block
# returns, so a stand-in returning the bare tensor would hand on its first row only.
_TUPLE_BLOCKS: set[type] = set()


class _Stand(nn.Module):
    """Stands in for a block: passes its input through; other attributes come from the block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: the swap must not move weights
        object.__setattr__(self, "_tuple", type(block) in _TUPLE_BLOCKS)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def _out(self, hidden_states):
        return (hidden_states, None) if object.__getattribute__(self, "_tuple") else hidden_states

    def forward(self, hidden_states, *args, **kwargs):
        return self._out(hidden_states)


class _Replay(_Stand):
    """Stands in for block L: returns the given output, whatever its input."""

    def __init__(self, block: nn.Module, output: torch.Tensor):
        super().__init__(block)
        object.__setattr__(self, "_output", output)

    def forward(self, hidden_states, *args, **kwargs):
        return self._out(object.__getattribute__(self, "_output"))


@torch.no_grad()
def capture(backbone: nn.Module, blocks: nn.ModuleList, layer: int, down: nn.Module, **inputs):
    """Run the backbone up to block `layer` -> (input of `down` at that block, the block's output)."""
    seen: dict[str, torch.Tensor] = {}

    def on_down(_module, args):
        seen["a"] = args[0]

    def on_block(module, _args, output):
        if isinstance(output, tuple):
            _TUPLE_BLOCKS.add(type(module))
        seen["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handles = [down.register_forward_pre_hook(on_down), blocks[layer].register_forward_hook(on_block)]
    try:
        backbone(**{"use_cache": False, **inputs})
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen["a"], seen["h"]


@contextmanager
def replay_from(blocks: nn.ModuleList, layer: int, output: torch.Tensor):
    """Within the block, a forward of the model skips blocks 0..layer and starts from `output`."""
    originals = [blocks[j] for j in range(layer + 1)]
    try:
        for j in range(layer):
            blocks[j] = _Stand(originals[j])
        blocks[layer] = _Replay(originals[layer], output)
        yield
    finally:
        for j, block in enumerate(originals):
            blocks[j] = block
