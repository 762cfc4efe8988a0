"""`memoir calibrate`: tau from data, saved as a config file that `memoir serve` can take."""

from __future__ import annotations

import json
from pathlib import Path


def add_parsers(sub) -> None:
    from .evaluation import add_model_args

    p = sub.add_parser("calibrate", help="set tau from paraphrase vs unrelated-prompt mask overlaps")
    p.add_argument("--data", required=True, help="edit file with paraphrases and unrelated prompts, "
                   "e.g. data/zsre/zsre_train_1k.json")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--far", type=float, default=0.005,
                   help="target share of unrelated prompts that switch the memory on")
    p.add_argument("--out", default="calibration.json", help="config JSON with tau, tau_growth, tau_ref_size and "
                   "the stats: `memoir serve --config` takes it as it is")
    p.add_argument("--plot", default=None, help="PNG of the two overlap distributions and tau")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from memoir_core.calibrate import calibrate
    from memoir_core.datasets import load_cases
    from memoir_core.memoir import background_texts

    from .evaluation import build_memoir

    cases = [c for c in load_cases(args.data, args.limit) if c.rephrases]
    memoir = build_memoir(args)
    enc = memoir.encoder
    print(f"masks of {len(cases)} prompts, their paraphrases and unrelated texts...", flush=True)
    prompts = memoir.masks([enc.plain(c.prompt) for c in cases]).numpy()
    paraphrases = memoir.masks([enc.plain(c.rephrases[0]) for c in cases]).numpy()
    unrelated_texts = [c.loc_prompt for c in cases if c.loc_prompt] + background_texts()
    unrelated = memoir.masks([enc.plain(t) for t in unrelated_texts]).numpy()
    cal = calibrate(prompts, paraphrases, unrelated, memoir.width, memoir.config.k, far=args.far)
    result = {**cal.fields(), "calibration": {**cal.to_dict(), "data": args.data, "model": args.model or "default",
                                           "layer": memoir.config.layer, "k": memoir.config.k}}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for p in cal.points:
        print(f"bank {p['size']:>6}: tau {p['tau']:.3f}  paraphrases routed {p['recall']:.3f}  "
              f"unrelated on {p['false_activation']:.3f}")
    print(f"tau={cal.tau:.3f} at {cal.ref_size} edits, growth {cal.tau_growth:.4f}; "
          f"extrapolated: {cal.to_dict()['extrapolated']}; saved {args.out}")
    if args.plot:
        _plot(prompts, paraphrases, unrelated, memoir, cal, args.plot)
    return 0


def _plot(prompts, paraphrases, unrelated, memoir, cal, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from memoir_core.calibrate import _best_overlaps

    k = memoir.config.k
    own = [len(np.intersect1d(p, q)) / k for p, q in zip(prompts, paraphrases, strict=True)]
    best = _best_overlaps(prompts, unrelated, memoir.width, k)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    bins = np.linspace(0.2, 1.0, 81)
    ax.hist(own, bins=bins, alpha=0.6, label="paraphrase vs its own edit")
    ax.hist(best, bins=bins, alpha=0.6, label=f"unrelated: best of {len(prompts)} edits")
    ax.axvline(cal.tau, color="k", ls="--", label=f"tau = {cal.tau:.3f}")
    ax.set_xlabel("mask overlap")
    ax.set_ylabel("prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
