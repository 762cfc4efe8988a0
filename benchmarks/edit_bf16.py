"""Side experiment behind benchmarks/README.md §1: does bf16 autocast make an edit cheaper?

    PYTHONPATH=. python benchmarks/edit_bf16.py --edits 10

Two memories on two copies of the default model edit the same ZsRE dev records, interleaved
(alternating which goes first): one in fp32 as memoir trains today, one under
torch.autocast("cpu", bfloat16). Prints wall and CPU seconds per edit, steps, final loss and
reliability (fp32 inference) of each. Not part of the smoke test; result in results/edit_bf16.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import torch  # noqa: E402

from memoir_core.datasets import load_cases  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import edit_speed

    common.set_torch_threads()
    run = common.Run("edit_bf16", vars(args))
    cases = load_cases(args.data, limit=args.edits)
    paths = {"fp32": common.load_memoir(), "bf16": common.load_memoir()}
    res: dict[str, list] = {"fp32": [], "bf16": []}
    for i, c in enumerate(cases):
        for name in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
            m = paths[name]
            t, cpu = time.perf_counter(), time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                rec = m.edit(c.prompt, c.target, edit_id=f"z{i}")
            res[name].append({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                              "steps": rec.steps, "loss": rec.final_loss})
    rows = []
    for name, m in paths.items():
        r = res[name]
        rel, _ = edit_speed.memoir_reliability(m, cases)
        rows.append({"path": name, "median_s": statistics.median(e["seconds"] for e in r),
                     "median_cpu_s": statistics.median(e["cpu_seconds"] for e in r),
                     "steps_median": statistics.median(e["steps"] for e in r),
                     "final_loss_median": statistics.median(e["loss"] for e in r),
                     "reached_loss": statistics.fmean(e["loss"] <= m.config.stop_loss for e in r), "reliability": rel})
    print(common.table(rows))
    run.finish(args.out, rows=rows, edits=res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
