"""Serving weights in oneDNN's blocked layout: the CPU's linear layers read memory at full speed.

One decode step of a small model on a CPU is bound by reading its weights. PyTorch's plain fp32
`linear` reads a row-major weight at about half the bandwidth oneDNN reaches on a weight it has
reordered once into its own blocked layout, and worse for a few rows (a batch of 4-16 decoding
sequences). `PackedLinear` holds that reordered copy and runs the product through oneDNN's
linear; the numbers differ from `F.linear`'s by rounding only (summation order).

Invariant: a packed layer computes what its `nn.Linear` computed, and `unpack` gives that
`nn.Linear` back with the same weight, bit for bit (oneDNN reorders losslessly). The dense weight
is dropped unless the layer must also train (autograd never runs through the packed product,
which has no backward). A deep copy of a packed model is a plain one, so a training copy made
from it (precision.py) trains as before.

Optionally a layer also holds a bf16 copy of its weight (`low=True`), used only inside
`DecodeSteps` (the decoder's one-token steps): half the bytes to read per token. Prefill, and so
every routing decision made from the prompt's activations, stays fp32. docs/engines.md gives the
measurements, and what bf16 steps do to the answers.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch build can pack a weight of this device and dtype."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """An `nn.Linear` whose product runs on a oneDNN-packed copy of its weight."""

    def __init__(self, linear: nn.Linear, keep_dense: bool, low: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = linear.bias
        # Kept only where the layer also trains: the packed product has no backward.
        self.dense: torch.Tensor | None = linear.weight if keep_dense else None
        self.low: torch.Tensor | None = None
        self.low_bias: torch.Tensor | None = None
        if low:
            self.low = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().bfloat16(), 1)
            self.low_bias = None if linear.bias is None else linear.bias.detach().bfloat16()
        self.in_low = False  # set only by DecodeSteps

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (kept, or reordered back: slow, for shapes and state_dict)."""
        return self.dense if self.dense is not None else self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None and self.bias.requires_grad)):
            return F.linear(x, self.weight, self.bias)
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        if self.in_low:
            return torch.ops.mkldnn._linear_pointwise(x.bfloat16(), self.low, self.low_bias, "none", [], "").float()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def unpacked(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.dense if self.dense is not None else nn.Parameter(self.packed.to_dense(), requires_grad=False)
        linear.bias = self.bias
        return linear

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The checkpoint's names and values: a packed model fingerprints as the plain one.
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def __deepcopy__(self, memo):
        return copy.deepcopy(self.unpacked(), memo)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"dense={'kept' if self.dense is not None else 'dropped'}, bf16 steps={self.low is not None}"


class DecodeSteps:
    """`with steps:` runs a model's packed layers on their bf16 copies (where they hold one).
    Made once per decoder: the layers are found once, entering costs a flag per layer."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, PackedLinear) and m.low is not None]

    def __enter__(self):
        for layer in self.layers:
            layer.in_low = True
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.in_low = False


def pack(model: nn.Module, keep_dense: bool | Callable[[str], bool], bf16_steps: bool = False) -> int:
    """Replace every fp32 CPU `nn.Linear` in `model` by a `PackedLinear` (with a bf16 copy for
    decode steps if `bf16_steps`); returns how many. `keep_dense`: for all layers, or a test of
    each layer's name (the layers autograd runs through). A no-op (0) where this torch cannot
    pack, or on other devices and dtypes."""
    count = 0
    for name, module in list(model.named_modules()):
        for leaf, child in list(module.named_children()):
            if type(child) is nn.Linear and available(child.weight.device, child.weight.dtype):
                path = f"{name}.{leaf}" if name else leaf
                keep = keep_dense(path) if callable(keep_dense) else keep_dense
                setattr(module, leaf, PackedLinear(child, keep, low=bf16_steps))
                count += 1
    if count:
        kept = "kept where edits train through them" if callable(keep_dense) else "kept" if keep_dense else "dropped"
        log.info("packed %d linear layers for oneDNN (dense weights %s%s)", count, kept,
                 ", bf16 copies for decode steps" if bf16_steps else "")
    return count


def unpack(model: nn.Module) -> int:
    """The inverse of `pack`: every `PackedLinear` back to the `nn.Linear` it was made from."""
    count = 0
    for module in list(model.modules()):
        for leaf, child in list(module.named_children()):
            if isinstance(child, PackedLinear):
                setattr(module, leaf, child.unpacked())
                count += 1
    return count
