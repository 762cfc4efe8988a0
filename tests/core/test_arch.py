"""The architecture registry (memoir_core/arch.py): where each kind keeps its blocks and the MLP
output projection the memory wraps, and the projection's widths."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch.nn as nn

from memoir_core import arch
from memoir_core.errors import UnsupportedArchitectureError
from tests.support.tiny import tiny_model

# the tiny models' widths (tests/support/tiny.py): hidden 64; MLP inner 128, or 4 x 64 for GPT-2/J
INNER = {"llama": 128, "gpt_neox": 128, "gpt2": 256, "gptj": 256}


@pytest.mark.parametrize("kind", sorted(INNER))
def test_the_registry_finds_each_kinds_blocks_and_projection(kind):
    model = tiny_model(kind, 400)
    spec = arch.spec_for(model)
    blocks = arch.get_path(model, spec.blocks)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == 4
    down = arch.get_path(blocks[0], spec.down)
    # the projection reads a(t), the MLP's inner width, and writes the residual stream's
    assert arch.projection_shape(down, spec.conv1d) == (INNER[kind], 64)
    assert spec.conv1d == (kind == "gpt2")


def test_set_path_swaps_the_module_in_place():
    model = tiny_model("llama", 400)
    spec = arch.spec_for(model)
    path = f"{spec.blocks}.2.{spec.down}"
    old, new = arch.get_path(model, path), nn.Identity()
    arch.set_path(model, path, new)
    assert arch.get_path(model, path) is new
    assert arch.get_path(model, f"{spec.blocks}.1.{spec.down}") is not new  # the other blocks keep theirs
    arch.set_path(model, path, old)
    assert arch.get_path(model, path) is old


def test_an_unknown_architecture_is_named_with_the_known_ones():
    model = nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="mixtral_dense")  # not a Hugging Face model_type
    with pytest.raises(UnsupportedArchitectureError) as raised:
        arch.spec_for(model)
    assert "'mixtral_dense'" in str(raised.value) and "llama" in str(raised.value)
    with pytest.raises(UnsupportedArchitectureError):
        arch.spec_for(nn.Linear(2, 2))  # no config at all
