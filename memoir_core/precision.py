"""The precision edits train in: a bf16 copy of the model where the hardware makes that cheap.

An edit is compute-bound (the forward up to block L over every row, then a few forward and
backward passes over the blocks after it). On a CPU with native bf16 (AVX512-BF16, AMX) a bf16
matrix product runs about 2.3x faster than fp32, so an fp32 model trains its edits on a bf16
copy of itself; serving keeps the fp32 model, and W_m and the trained columns stay fp32. The
copy costs half the model's fp32 size in memory. On a GPU the served model already is bf16 or
fp16 and trains on itself.
"""

from __future__ import annotations

import copy

import torch

from .models import pick_dtype


def native_bf16(device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def train_dtype(model, name: str) -> torch.dtype:
    """The dtype edits train in: `name`, or for "auto" bf16 where an fp32 model runs on a bf16-capable CPU."""
    param = next(model.parameters())
    if name == "auto":
        if param.dtype == torch.float32 and native_bf16(param.device):
            return torch.bfloat16
        return param.dtype
    try:
        return pick_dtype(name, param.device.type)
    except KeyError:
        raise ValueError(f"unknown train_dtype {name!r}; use auto, float32, bfloat16 or float16") from None


def training_model(model, dtype: torch.dtype):
    """The model itself if it already runs in `dtype`, else a frozen copy in `dtype`."""
    if next(model.parameters()).dtype == dtype:
        return model
    shadow = copy.deepcopy(model).to(dtype)
    shadow.requires_grad_(False)
    if dtype != torch.float32 and next(model.parameters()).device.type == "cpu":
        # The CPU's flash-attention backward in bf16 costs more than the whole MLP of a short
        # row; plain matmul attention is faster at the few dozen tokens an edit's rows have.
        shadow.set_attn_implementation("eager")
    return shadow.eval()
