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
    cost = [c.get("recent_edit_seconds_median") for c in checkpoints]
    long_stream = any(_number(y) for y in cost)
    if long_stream:  # a long stream: how edit cost moves as the bank fills, below
        fig, (ax, below) = plt.subplots(2, 1, figsize=(7, 6.4), dpi=120, sharex=True,
                                        gridspec_kw={"height_ratios": [2, 1]})
        _plot_cost(below, xs, checkpoints)
    else:
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
    if not long_stream:  # otherwise the cost panel below carries the axis label
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


def _plot_cost(ax, xs: list, checkpoints: list[dict]) -> None:
    """Median seconds and steps of the edits just before each point, and how many of them ended
    unlearnt: the figures a stream of 10,000 edits is judged on besides quality."""
    ax.plot(xs, [c.get("recent_edit_seconds_median") for c in checkpoints], "o-", color="tab:red",
            markersize=4, label="edit seconds, median of the last 100")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_xlabel("edits applied (sequential)")
    right = ax.twinx()
    right.plot(xs, [c.get("recent_steps_median") for c in checkpoints], "s:", color="tab:blue",
               markersize=4, label="steps, median of the last 100 (right)")
    right.plot(xs, [c.get("recent_unlearnt") for c in checkpoints], "x--", color="black",
               markersize=5, label="unlearnt of the last 100 (right)")
    right.set_ylim(bottom=0)
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
