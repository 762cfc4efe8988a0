"""The registry entry of one edit: what was asked, who asked, what it did to W_m."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch


@dataclass
class EditRecord:
    id: str
    prompt: str
    target_new: str
    rephrase_prompts: list[str] = field(default_factory=list)
    subject: str | None = None
    # "given" or "inferred" (subjects.infer_subject): the edit switches the memory on only for
    # prompts that name its subject. None: stored before subject routing, masks alone route it.
    subject_source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    author: str | None = None
    created_at: float = 0.0
    version: int = 0  # memory version this edit created
    steps: int = 0
    final_loss: float = 0.0
    seconds: float = 0.0
    best_overlap: float = 0.0  # with the most similar edit already in the bank
    best_overlap_id: str | None = None
    supersedes: str | None = None
    # Extra routing keys (sorted column indices): the chat form of the prompt and any given
    # paraphrases. They only route; the memory always reads the columns of `idx`.
    keys: list[list[int]] = field(default_factory=list)
    # The mask that routes to this edit (sorted column indices) where it differs from the
    # columns it trains (config pool="norm"); None: idx routes
    route: list[int] | None = None
    # tensors: the mask (sorted column indices) and the quantised delta on those columns
    idx: torch.Tensor = field(default=None, repr=False)  # [k] int64
    delta: torch.Tensor = field(default=None, repr=False)  # [d_out, k] int32
    # the edit's memory inputs as a factor F [r, k] fp16 (guard.py); None: stored before it
    inputs: torch.Tensor | None = field(default=None, repr=False)

    @property
    def route_mask(self) -> np.ndarray:
        """The edit's mask in the routing bank."""
        return np.asarray(self.route, dtype=np.int64) if self.route is not None else self.idx.numpy()

    def info(self) -> dict[str, Any]:
        """Every field but the tensors, JSON-ready."""
        return {
            f.name: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for f in fields(self)
            if f.name not in TENSORS
            for v in (getattr(self, f.name),)
        }

    @classmethod
    def from_info(cls, info: dict[str, Any], idx: torch.Tensor, delta: torch.Tensor,
                  inputs: torch.Tensor | None = None) -> "EditRecord":
        return cls(**info, idx=idx, delta=delta, inputs=inputs)


TENSORS = ("idx", "delta", "inputs")
