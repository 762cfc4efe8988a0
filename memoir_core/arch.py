"""Where each architecture keeps its decoder blocks and MLP output projection: one registry.

The memory only needs two things from an architecture: the list of decoder blocks and,
inside a block, the projection whose input is `a(t)` (width D) and whose output joins the
residual stream. Everything else (backbone, LM head) is found through Hugging Face's own
generic accessors (`base_model`, `get_output_embeddings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    blocks: str  # dotted path from the *ForCausalLM module to the ModuleList of blocks
    down: str  # dotted path inside one block to the MLP output projection
    conv1d: bool = False  # GPT-2's Conv1D keeps its weight as [in, out]


_LLAMA_LIKE = ArchSpec("model.layers", "mlp.down_proj")

REGISTRY: dict[str, ArchSpec] = {
    **{
        name: _LLAMA_LIKE
        for name in (
            "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
            "gemma3_text", "phi3", "olmo", "olmo2", "granite", "smollm3", "cohere",
        )
    },
    "gpt2": ArchSpec("transformer.h", "mlp.c_proj", conv1d=True),
    "gpt_neox": ArchSpec("gpt_neox.layers", "mlp.dense_4h_to_h"),
    "gptj": ArchSpec("transformer.h", "mlp.fc_out"),
}


def spec_for(model: nn.Module) -> ArchSpec:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not in the registry (known: {known}); "
            "add its block list and MLP output projection to memoir_core/arch.py"
        )
    return REGISTRY[model_type]


def get_path(root: nn.Module, dotted: str) -> nn.Module:
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def set_path(root: nn.Module, dotted: str, value: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(get_path(root, parent) if parent else root, leaf, value)


def projection_shape(layer: nn.Module, conv1d: bool) -> tuple[int, int]:
    """(D, d_out) of the projection: D is the width of a(t)."""
    w = layer.weight
    return (w.shape[0], w.shape[1]) if conv1d else (w.shape[1], w.shape[0])
