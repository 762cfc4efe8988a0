"""The precision edits train in: a bf16 copy of the model where this machine makes that cheaper.

An edit is compute-bound (the forward up to block L over every row, then a few forward and
backward passes over the blocks after it). Where bf16 matrix products run faster than fp32 ones,
an fp32 model trains its edits on a bf16 copy of itself; serving keeps the fp32 model, and W_m
and the trained columns stay fp32. The copy costs half the model's fp32 size in memory. On a GPU
the served model already is bf16 or fp16; edits then train on its twin (the same weights).

Whether bf16 is faster is measured, not read off the CPU's flags: a native-bf16 instruction does
not make PyTorch's bf16 product faster at an edit's shapes. On an AMD Zen 4 (AVX512-BF16) it ran
about 2.3x fp32; on an Intel Xeon with AVX512-BF16 and no AMX, 0.6x, and edits took 35% longer on
the bf16 copy than in fp32 (docs/tuning.md). So "auto" times both products at the
shape an edit runs most and takes bf16 only where it wins by BF16_MIN_SPEEDUP.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import pick_dtype


def native_bf16(device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


# A margin, so that a machine where both run about as fast does not flip between restarts.
BF16_MIN_SPEEDUP = 1.25
PROBE_ROWS = 128  # tokens in one edit's forward: its rows times their width (benchmarks/edit_steps.py)


def bf16_speedup(d_in: int, d_out: int, rows: int = PROBE_ROWS, repeats: int = 8) -> float:
    """fp32 time / bf16 time of a [rows, d_in] x [d_in, d_out] product on this CPU (best of 3 rounds)."""
    def best(dtype: torch.dtype) -> float:
        x, w = torch.randn(rows, d_in, dtype=dtype), torch.randn(d_out, d_in, dtype=dtype)
        F.linear(x, w)  # the first call builds oneDNN's kernel
        times = []
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(repeats):
                F.linear(x, w)
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.no_grad():
        return best(torch.float32) / best(torch.bfloat16)


def train_dtype(model, name: str, shape: tuple[int, int] | None = None) -> torch.dtype:
    """The dtype edits train in: `name`, or for "auto" bf16 where an fp32 model runs on a CPU whose
    bf16 products at `shape` (d_in, d_out: the model's widest block product) are measurably faster."""
    param = next(model.parameters())
    if name == "auto":
        if param.dtype == torch.float32 and native_bf16(param.device) and \
                (shape is None or bf16_speedup(*shape) >= BF16_MIN_SPEEDUP):
            return torch.bfloat16
        return param.dtype
    try:
        return pick_dtype(name, param.device.type)
    except KeyError:
        raise ValueError(f"unknown train_dtype {name!r}; use auto, float32, bfloat16 or float16") from None


def twin(module: nn.Module, memo: dict[int, nn.Module] | None = None) -> nn.Module:
    """The same model as a second set of module objects over the same parameters, buffers and
    packed weights (packed.py): nothing is copied, but hooks, block swaps (blockrun.py) and a
    paused forward (timeslice.py) on one leave the other alone. Edits that train in the served
    model's own dtype train on its twin, so they pause mid-forward as they do on a copy."""
    memo = {} if memo is None else memo
    if id(module) in memo:  # a module reached twice (tied) is twinned once
        return memo[id(module)]
    if "forward" in vars(module):  # a forward bound to this very object (accelerate's hooks) would run it
        raise TypeError(f"{type(module).__name__} has a forward of its own; it cannot be twinned")
    clone = copy.copy(module)  # a new __dict__ holding the same values
    memo[id(module)] = clone
    for name, value in list(vars(clone).items()):
        if "hooks" in name and isinstance(value, dict):
            vars(clone)[name] = type(value)()  # hooks belong to one of the two
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    clone._modules = {name: None if child is None else twin(child, memo) for name, child in module._modules.items()}
    return clone


def training_model(model, dtype: torch.dtype):
    """The model's twin if it already runs in `dtype` (the model itself where a module cannot be
    twinned), else a frozen copy in `dtype`."""
    if next(model.parameters()).dtype == dtype:
        try:
            return twin(model)
        except TypeError:
            return model
    shadow = copy.deepcopy(model).to(dtype)
    shadow.requires_grad_(False)
    if dtype != torch.float32 and next(model.parameters()).device.type == "cpu":
        # The CPU's flash-attention backward in bf16 costs more than the whole MLP of a short
        # row; plain matmul attention is faster at the few dozen tokens an edit's rows have.
        shadow.set_attn_implementation("eager")
    return shadow.eval()
