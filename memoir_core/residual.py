"""W_m, the residual memory matrix, kept as an exact sum of the live edits' deltas.

Each edit's delta on its k columns is quantised to a fixed grid (2^-24) and stored as int32.
W_m's accumulator is int64, so adding and removing deltas is exact and order-free: a rollback
followed by a replay of the remaining log gives the same W_m bit for bit. The fp32 copy used
for serving is derived from the accumulator column by column.
"""

from __future__ import annotations

import torch

from .errors import EditFailedError

SCALE = 2.0**24
_INT32_MAX = 2**31 - 1


def quantise(delta: torch.Tensor) -> torch.Tensor:
    """fp32 delta -> int32 on the 2^-24 grid; refuses non-finite or out-of-range values."""
    if not torch.isfinite(delta).all():
        raise EditFailedError("the edit's update is not finite; nothing was applied")
    scaled = torch.round(delta.double() * SCALE)
    if scaled.abs().max() > _INT32_MAX:
        raise EditFailedError("the edit's update is out of range (|delta| >= 128); nothing was applied")
    return scaled.to(torch.int32)


class ResidualWeights:
    def __init__(self, d_out: int, width: int, device: torch.device | str = "cpu"):
        self.acc = torch.zeros(d_out, width, dtype=torch.int64, device=device)
        self.weight = torch.zeros(d_out, width, dtype=torch.float32, device=device)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """W_m[:, idx] as a fresh fp32 tensor [d_out, k]."""
        return self.weight.index_select(1, idx.to(self.weight.device))

    def columns_without(self, idx: torch.Tensor, other_idx: torch.Tensor, other_delta: torch.Tensor) -> torch.Tensor:
        """W_m[:, idx] as it would be with another edit's delta (on its own columns) removed."""
        idx = idx.to(self.acc.device)
        acc = self.acc.index_select(1, idx)
        other_idx = other_idx.to(self.acc.device)
        where = torch.searchsorted(idx, other_idx).clamp_max(idx.numel() - 1)
        shared = idx[where] == other_idx  # both index sets are sorted
        acc.index_add_(1, where[shared], other_delta.to(self.acc.device, torch.int64)[:, shared], alpha=-1)
        return (acc.double() / SCALE).float()

    def add(self, idx: torch.Tensor, delta: torch.Tensor) -> None:
        self._update(idx, delta, +1)

    def subtract(self, idx: torch.Tensor, delta: torch.Tensor) -> None:
        self._update(idx, delta, -1)

    def _update(self, idx: torch.Tensor, delta: torch.Tensor, sign: int) -> None:
        idx = idx.to(self.acc.device)
        self.acc.index_add_(1, idx, delta.to(self.acc.device, torch.int64), alpha=sign)
        self.weight[:, idx] = (self.acc.index_select(1, idx).double() / SCALE).float()

    def load(self, acc: torch.Tensor) -> None:
        if tuple(acc.shape) != tuple(self.acc.shape):
            raise ValueError(f"accumulator shape {tuple(acc.shape)} != {tuple(self.acc.shape)}")
        self.acc.copy_(acc)
        self.weight.copy_((self.acc.double() / SCALE).float())
