"""The basis every stored mask and edit depends on; persisted with the state.

Kept apart from memoir.py so the state store (and its crash-test children) can use it
without importing the model code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Basis:
    permutation: torch.Tensor  # [D] int64
    background_mean: torch.Tensor  # [D] fp32
    prefixes: list[str]
    # [D] fp32, config pool="norm": the centre of the norm-weighted routing features (their
    # TopHash); None: routing features are plain means, centred on background_mean
    route_mean: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the state stores of it (beside the prefixes)."""
        out = {"permutation": self.permutation.long().cpu(), "background_mean": self.background_mean.float().cpu()}
        if self.route_mean is not None:
            out["route_mean"] = self.route_mean.float().cpu()
        return out
