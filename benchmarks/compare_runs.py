"""Two or more `memoir eval` reports of one stream, side by side at the checkpoints they share.

    python benchmarks/compare_runs.py default=benchmarks/results/quality_counterfact_t2000.json \\
        yield=benchmarks/results/quality_counterfact_t2000_yield.json \\
        --plot benchmarks/results/compare_counterfact_guard_yield.png

A checkpoint pairs up across runs only where each scored the same cases: `--checkpoint-sample`
picks them from the stream length alone, so runs of one stream with the same sample size score
the same edits at each count, whatever their settings. Points that scored a different number of
cases (a final point beside a sampled one) are left out of the table and marked in the plot.
Prints one row per shared checkpoint: reliability, generalization, locality and, where the
report has it, how many edits so far ended unlearnt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = (("reliability", "rel"), ("generalization", "gen"), ("locality", "loc"))


def load(spec: str) -> tuple[str, list[dict]]:
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = Path(spec).stem, spec
    return label, json.loads(Path(path).read_text())["checkpoints"]


def paired(runs: dict[str, list[dict]]) -> list[int]:
    """Edit counts where every run has a checkpoint that scored the same number of cases."""
    by_count = [{c["edits"]: c.get("scored_cases") for c in curve} for curve in runs.values()]
    shared = set.intersection(*(set(d) for d in by_count))
    return sorted(n for n in shared if len({d[n] for d in by_count}) == 1)


def table(runs: dict[str, list[dict]]) -> list[str]:
    at = {label: {c["edits"]: c for c in curve} for label, curve in runs.items()}
    head = ["edits"] + [f"{label} {short}" for label in runs for _, short in METRICS]
    with_unlearnt = [label for label, curve in runs.items() if all("unlearnt" in c for c in curve)]
    head += [f"{label} unlearnt" for label in with_unlearnt]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in paired(runs):
        cells = [str(n)] + [f"{at[label][n][key]:.3f}" for label in runs for key, _ in METRICS]
        cells += [str(at[label][n]["unlearnt"]) for label in with_unlearnt]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(runs: dict[str, list[dict]], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared = set(paired(runs))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colours = {"reliability": "tab:blue", "generalization": "tab:orange", "locality": "tab:green"}
    for (label, curve), style in zip(runs.items(), ("-", "--", ":", "-.")):
        for key, _ in METRICS:
            xs = [c["edits"] for c in curve]
            ax.plot(xs, [c[key] for c in curve], style, color=colours[key], label=f"{key}, {label}")
            unpaired = [c for c in curve if c["edits"] not in shared]
            ax.plot([c["edits"] for c in unpaired], [c[key] for c in unpaired], "o", mfc="none",
                    color=colours[key], markersize=6)
    ax.set_xlabel("edits applied (sequential); open circles: not scored on the same cases in every run")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="LABEL=PATH of a `memoir eval --out` report (or PATH)")
    p.add_argument("--plot", default=None, help="PNG of the curves")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    if len(args.reports) < 2:
        p.error("give two reports or more")
    loaded = [load(spec) for spec in args.reports]
    runs = dict(loaded)
    if len(runs) < len(loaded):
        p.error("two reports have one label: name them, LABEL=PATH")
    if not paired(runs):
        print("compare_runs: the reports share no checkpoint scored on the same cases", file=sys.stderr)
        return 1
    print("\n".join(table(runs)))
    if args.plot:
        plot(runs, args.plot, args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
