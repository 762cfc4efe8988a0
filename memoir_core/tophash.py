"""TopHash: the mask of a text.

Mean of a(t) over the text's tokens, minus the background mean, the k entries of largest
magnitude, then a fixed random permutation of their indices. The permutation and the
background mean are persisted with the state: without them every stored mask is garbage.
"""

from __future__ import annotations

import torch


def span_mean(acts: torch.Tensor, span: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of acts [B, T, D] over the positions where span [B, T] is true, in fp32 -> [B, D].

    With `centre` [D] (config pool="norm") each token weighs ||a_t - centre||: the tokens far
    from the background (names, rare words) outweigh the template words that many questions
    share, so a question about one thing stops looking like every question of its shape."""
    weights = span.to(device=acts.device, dtype=torch.float32).unsqueeze(-1)
    if centre is not None:
        weights = weights * (acts.float() - centre.to(acts.device)).norm(dim=-1, keepdim=True)
    total = (acts.float() * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp_min(1e-6)


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
