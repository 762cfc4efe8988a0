"""Anatomy of one edit: wall and CPU time of each step of `Memoir.propose` (README §1 and §4).

    PYTHONPATH=. python benchmarks/edit_steps.py --edits 12 [--set train_dtype=float32]

The server's engine runs an edit one `propose` step at a time between decode steps, so these
durations are what a new request may wait before its prefill, and what the edit costs. Step 0
is the preparation (rows, the forward up to block L over every row, mask, neighbours); step 1
the first optimisation step (whole-vocabulary head); then the later steps (candidate
vocabulary); the last is the final loss check and the record.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from memoir_cli.evaluation import parse_sets  # noqa: E402
from memoir_core.config import MemoirConfig, checked  # noqa: E402
from memoir_core.datasets import load_cases  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=12)
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--model", default="default")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one config field")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    common.set_torch_threads()
    run = common.Run("edit_steps", vars(args))
    # checked: a misspelt --set field is refused, not dropped (from_dict alone tolerates it)
    config = MemoirConfig.from_dict(checked(parse_sets(args.set), "--set")) if args.set else None
    m = common.load_memoir(args.model, config)
    run.data["train_dtype"] = m.train_dtype
    edits = []
    for i, c in enumerate(load_cases(args.data, limit=args.edits)):
        gen = m.propose(c.prompt, c.target, edit_id=f"e{i}")
        steps = []
        while True:
            t, cpu = time.perf_counter(), time.process_time()
            try:
                next(gen)
                done = None
            except StopIteration as stop:
                done = stop.value
            steps.append({"wall": time.perf_counter() - t, "cpu": time.process_time() - cpu})
            if done is not None:
                m.commit(done)
                break
        edits.append(steps)
        print(f"  {i}: " + " ".join(f"{s['wall']:.2f}/{s['cpu']:.2f}" for s in steps), flush=True)
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    rows = [
        {"part": "preparation (step 0)", "cpu_s_median": med([e[0]["cpu"] for e in edits]),
         "cpu_s_max": max(e[0]["cpu"] for e in edits), "wall_s_median": med([e[0]["wall"] for e in edits])},
        {"part": "first optimisation step", "cpu_s_median": med([e[1]["cpu"] for e in edits if len(e) > 2]),
         "cpu_s_max": max((e[1]["cpu"] for e in edits if len(e) > 2), default=float("nan")),
         "wall_s_median": med([e[1]["wall"] for e in edits if len(e) > 2])},
        {"part": "later optimisation steps", "cpu_s_median": med([s["cpu"] for e in edits for s in e[2:-1]]),
         "cpu_s_max": max((s["cpu"] for e in edits for s in e[2:-1]), default=float("nan")),
         "wall_s_median": med([s["wall"] for e in edits for s in e[2:-1]])},
        {"part": "whole edit", "cpu_s_median": med([sum(s["cpu"] for s in e) for e in edits]),
         "cpu_s_max": max(sum(s["cpu"] for s in e) for e in edits),
         "wall_s_median": med([sum(s["wall"] for s in e) for e in edits])},
    ]
    print(common.table(rows))
    run.finish(args.out, rows=rows, edits=edits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
