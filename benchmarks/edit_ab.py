"""Edit time of two configs, side by side: what a config change costs per edit.

    PYTHONPATH=. python benchmarks/edit_ab.py --b relation_lead=null            # 30 edits each, about 1 min
    PYTHONPATH=. python benchmarks/edit_ab.py --a other_question_lead=null --b other_question_lead=0.12

Two memories (A: the defaults with --a over them, B: with --b) each load the default model and
take the same first --edits ZsRE dev records, interleaved (A's edit j, then B's), so load from
other processes hits both alike. It prints each side's median and p90 wall seconds per edit and
the ratio B / A; timings are of `Memoir.edit` (propose and commit), what the server runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from memoir_cli.evaluation import parse_sets
from memoir_core.config import MemoirConfig, checked
from memoir_core.datasets import load_cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", action="append", default=[], metavar="FIELD=VALUE", help="config field of side A")
    ap.add_argument("--b", action="append", default=[], metavar="FIELD=VALUE", help="config field of side B")
    ap.add_argument("--edits", type=int, default=30)
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--model", default="default", help='"tiny": the tests\' random model (a smoke run)')
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common.set_torch_threads()
    run = common.Run("edit_ab", vars(args))
    sides = {}
    for side, sets in (("A", args.a), ("B", args.b)):
        fields = checked(parse_sets(sets), f"--{side.lower()}")
        config = MemoirConfig(**fields) if args.model != "tiny" else \
            MemoirConfig(**{"k": 32, "tau": 0.5, "max_steps": 30, "stop_loss": 0.05, "lr": 0.5, **fields})
        sides[side] = (common.load_memoir(args.model, config), [])
    cases = load_cases(args.data, args.edits)
    for j, case in enumerate(cases):
        for memoir, seconds in sides.values():
            t0 = time.perf_counter()
            memoir.edit(case.prompt, case.target, subject=case.subject)
            seconds.append(time.perf_counter() - t0)
        print(f"\r  {j + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    rows = []
    for side, (memoir, seconds) in sides.items():
        s = common.summary(seconds)
        rows.append({"side": side, "set": " ".join(args.a if side == "A" else args.b) or "(defaults)",
                     "edits": s["n"], "median_s": s["median"], "p90_s": s["p90"]})
    ratio = rows[1]["median_s"] / rows[0]["median_s"]
    print(common.table(rows))
    print(f"median B / A: {ratio:.2f}")
    run.finish(args.out, rows=rows, median_ratio=ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
