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
