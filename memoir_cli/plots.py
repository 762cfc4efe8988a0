"""Evaluation curves as a PNG (matplotlib without a display)."""

from __future__ import annotations

import math


def _number(y) -> bool:
    return y is not None and not math.isnan(y)


def plot_curve(checkpoints: list[dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [c["edits"] for c in checkpoints]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, style in (("reliability", "o-"), ("generalization", "s-"), ("locality", "^-"),
                       ("greedy_reliability", "d--"), ("greedy_generalization", "v--")):
        ys = [c.get(key) for c in checkpoints]
        if any(_number(y) for y in ys):  # the hallucination set has no paraphrases: no gen line
            ax.plot(xs, ys, style, label=key, markersize=4)
    ppl = [c.get("target_perplexity") for c in checkpoints]
    median = [c.get("target_perplexity_median") for c in checkpoints]
    if any(_number(y) for y in ppl):  # the hallucination set's measure: its own scale
        right = ax.twinx()
        right.plot(xs, ppl, "x:", color="tab:gray", label="target perplexity, mean (right)", markersize=5)
        if any(_number(y) for y in median):
            right.plot(xs, median, "+:", color="black", label="target perplexity, median (right)", markersize=6)
        right.set_ylabel("target perplexity")
        top = max(y for y in ppl + median if _number(y))
        if top > 20:  # a few failed edits' targets dominate the mean: a log axis keeps the rest legible
            right.set_yscale("log")
        right.set_ylim(1.0, max(1.5, top * 1.1))
        right.legend(loc="lower right")
    ax.set_xlabel("edits applied (sequential)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    # with perplexity the right axis's lines run through the lower left
    ax.legend(loc="center left" if any(_number(y) for y in ppl) else "lower left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
