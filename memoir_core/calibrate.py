"""Choosing tau from data: paraphrase overlaps against the overlaps of unrelated prompts.

An unrelated prompt switches the memory on when its best overlap with any stored mask reaches
tau, and that best overlap creeps up as the bank grows (the maximum of N draws). So tau is set
per bank size: for each N, the (1 - far) quantile of unrelated prompts' best overlap against N
stored masks, measured where data allows and extrapolated beyond it with the extreme-value
form a + b * sqrt(2 ln N) fitted to the measured points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import MemoirConfig, growth_term
from .maskbank import MaskBank


@dataclass
class Calibration:
    tau: float  # at bank size `ref_size`
    tau_growth: float  # b of a + b*sqrt(2 ln N)
    ref_size: int
    far: float  # target false activation rate of unrelated prompts
    points: list[dict] = field(default_factory=list)  # measured: size, tau, recall, false_activation
    paraphrase_overlap: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict:
        """The MemoirConfig fields this calibration sets."""
        return {"tau": self.tau, "tau_growth": self.tau_growth, "tau_ref_size": self.ref_size}

    def to_dict(self) -> dict:
        config = MemoirConfig(**self.fields())
        return {**self.fields(), "far": self.far, "points": self.points, "paraphrase_overlap": self.paraphrase_overlap,
                "extrapolated": {str(n): round(config.tau_at(n), 4) for n in (10**3, 10**4, 10**5, 10**6)}}


def _best_overlaps(bank_masks: np.ndarray, queries: np.ndarray, width: int, k: int) -> np.ndarray:
    bank = MaskBank(width, k)
    for i, m in enumerate(bank_masks):
        bank.add(str(i), m)
    return np.array([m.overlap for m in bank.best(queries)])


def calibrate(prompt_masks: np.ndarray, paraphrase_masks: np.ndarray, unrelated_masks: np.ndarray, width: int,
              k: int, far: float = 0.005, sizes: tuple[int, ...] = (50, 100, 200, 500, 1000, 2000),
              margin: float = 0.01, seed: int = 0) -> Calibration:
    """prompt_masks[i] and paraphrase_masks[i] belong to one edit; unrelated masks match none."""
    rng = np.random.default_rng(seed)
    own = np.array([len(np.intersect1d(p, q)) / k for p, q in zip(prompt_masks, paraphrase_masks, strict=True)])
    points = []
    for n in sorted({s for s in sizes if s <= len(prompt_masks)} | {len(prompt_masks)}):
        chosen = rng.choice(len(prompt_masks), size=n, replace=False)
        best = _best_overlaps(prompt_masks[chosen], unrelated_masks, width, k)
        tau_n = float(np.quantile(best, 1.0 - far)) + margin
        points.append({"size": int(n), "tau": round(tau_n, 4),
                       "unrelated_best_p50": round(float(np.median(best)), 4),
                       "recall": round(float((own >= tau_n).mean()), 4),
                       "false_activation": round(float((best >= tau_n).mean()), 4)})
    xs = np.array([growth_term(p["size"]) for p in points])
    ys = np.array([p["tau"] for p in points])
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(points) > 1 else 0.0
    ref = points[-1]
    return Calibration(tau=ref["tau"], tau_growth=max(0.0, slope), ref_size=ref["size"], far=far, points=points,
                       paraphrase_overlap={q: round(float(np.quantile(own, v)), 4)
                                           for q, v in (("p05", .05), ("p10", .1), ("p50", .5))})
