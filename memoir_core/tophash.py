"""TopHash: the mask of a text.

Mean of a(t) over the text's tokens, minus the background mean, the k entries of largest
magnitude, then a fixed random permutation of their indices. The permutation and the
background mean are persisted with the state: without them every stored mask is garbage.
"""

from __future__ import annotations

import torch


def span_mean(acts: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Mean of acts [B, T, D] over the positions where span [B, T] is true, in fp32 -> [B, D]."""
    weights = span.to(device=acts.device, dtype=torch.float32).unsqueeze(-1)
    total = (acts.float() * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp_min(1.0)


def random_permutation(width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(width, generator=gen)


class TopHash:
    """Maps sequence features [B, D] to sorted masks [B, k] of column indices."""

    def __init__(self, k: int, permutation: torch.Tensor, background_mean: torch.Tensor):
        if permutation.ndim != 1 or background_mean.shape != permutation.shape:
            raise ValueError("permutation and background mean must both have shape [D]")
        self.k = k
        self.permutation = permutation.long().cpu()
        self.background_mean = background_mean.float().cpu()

    @property
    def width(self) -> int:
        return self.permutation.numel()

    def masks(self, features: torch.Tensor) -> torch.Tensor:
        centred = features.float().cpu() - self.background_mean
        top = centred.abs().topk(self.k, dim=-1).indices
        return self.permutation[top].sort(dim=-1).values
