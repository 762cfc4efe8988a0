"""Shared helpers of the speed benchmarks: threads, the machine, interleaved timing, tables, JSON.

Import this module before torch: it pins OpenMP/MKL to one thread unless the caller set them
(the benchmarks are meant to run beside other work on a small shared CPU, where one thread per
process is both faster and steadier). Every benchmark measures its baseline in the same run,
interleaved with the candidate, and reports ratios next to absolute values.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, os.environ.get("MEMOIR_THREADS", "1"))

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("MEMOIR_SHARED", "/work/shared"))
ZSRE_DEV = SHARED / "data" / "zsre" / "zsre_edit_dev_500.json"
COUNTERFACT_TRAIN = SHARED / "data" / "counterfact" / "counterfact_train_10k.json"


def threads() -> int:
    return int(os.environ.get("MEMOIR_THREADS", os.environ["OMP_NUM_THREADS"]))


def set_torch_threads() -> int:
    import torch

    n = threads()
    torch.set_num_threads(n)
    return n


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "threads": threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info.update(cpu_model=fields.get("Model name"), cores=fields.get("CPU(s)"),
                    threads_per_core=fields.get("Thread(s) per core"), l3=fields.get("L3 cache"),
                    cpu_family=fields.get("CPU family"), cpu_model_number=fields.get("Model"))
        # The same "AMD EPYC" name covered a Zen 4 VM with AVX512-BF16 and a Zen 3 one with AVX2
        # only: edits train on a bf16 copy only on the first (memoir_core/precision.py), 2.3x apart.
        flags = set(fields.get("Flags", "").split())
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Run:
    """One benchmark run: machine and load at start, results, load at the end, written as JSON."""

    def __init__(self, name: str, args: dict):
        self.name = name
        self.started = time.time()
        self.data: dict = {"benchmark": name, "args": args, "machine": machine(), "load_start": loadavg(),
                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))}

    def finish(self, out: str | None = None, **results) -> Path:
        self.data.update(results)
        self.data["load_end"] = loadavg()
        self.data["wall_seconds"] = round(time.time() - self.started, 1)
        path = Path(out) if out else RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        print(f"machine: {self.data['machine'].get('cpu_model')} x{self.data['machine'].get('cores')}, "
              f"{threads()} thread(s); load {self.data['load_start']} -> {self.data['load_end']}")
        print(f"wrote {path}")
        return path


def pct(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def summary(values) -> dict:
    values = list(values)
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values), "p90": pct(values, 90), "p99": pct(values, 99),
            "mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def fmt(v) -> str:
    if v is None:  # a column that does not apply to the row
        return ""
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        return f"{v:.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
    return str(v)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a GitHub-markdown table (printed and pasted into README.md as is)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)


def load_memoir(model: str = "default", config=None):
    """The default model (SmolLM2-135M-Instruct), or the tests' tiny random Llama ("tiny", for
    the smoke test: it measures nothing, it only runs the code), with a fresh memory."""
    from memoir_core.memoir import Memoir

    if model == "tiny":
        import sys

        sys.path.insert(0, str(REPO))
        from tests.support.tiny import CORPUS, tiny_model, tiny_tokenizer

        from memoir_core.config import MemoirConfig

        tok = tiny_tokenizer()
        cfg = config or MemoirConfig(k=32, tau=0.5, max_steps=30, stop_loss=0.05, lr=0.5)
        return Memoir(tiny_model("llama", len(tok)), tok, cfg, background=CORPUS[:12])
    from memoir_core import models

    m, tok = models.load(None if model == "default" else model)
    return Memoir(m, tok, config)
