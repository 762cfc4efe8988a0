"""What the server still holds after N edits, by allocation site: held memory versus RSS (issue 20).

    pip install memray
    PYTHONPATH=. python benchmarks/heap_growth.py --edits 20,140     # about 10 minutes on 2 cores

RSS grows by about 130 KB per stored edit (benchmarks/edit_memory.py), but RSS counts pages the
allocator keeps after they are freed as well as what is still allocated. This separates the
two. For each N it starts `memoir serve` under memray's tracker (every allocation, native
stacks, from the first import), posts N ZsRE edits, stops tracking and reads what is still
allocated, grouped by kind (oneDNN JIT code, torch tensors by Python line, Python objects,
numpy, other). The difference between two N is what the extra edits left allocated; RSS
minus that is allocator retention. memray's own bookkeeping inflates RSS under tracking, so the
RSS column is comparable only between the runs of this script.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import httpx
from edit_memory import DATA, free_port, start, stop

from memoir_core.datasets import load_cases

# Run in the server process: track from the first import, stop on SIGUSR2, then serve on.
TRACKED = """
import runpy, signal, sys, memray
tracker = memray.Tracker(sys.argv[1], native_traces=True, file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS)
tracker.__enter__()
signal.signal(signal.SIGUSR2, lambda *_: tracker.__exit__(None, None, None))
sys.argv = ["memoir"] + sys.argv[2:]
runpy.run_module("memoir_cli.main", run_name="__main__")
"""


def rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def kind(record) -> str:
    try:
        native = " ".join(f[0] for f in record.native_stack_trace(max_stacks=8))
    except Exception:  # noqa: BLE001 - a frame memray cannot resolve: classify by what is left
        native = ""
    try:
        python = [f"{f[0]} ({Path(f[1]).name}:{f[2]})" for f in record.stack_trace(max_stacks=1)]
    except Exception:  # noqa: BLE001
        python = []
    where = python[0] if python else "?"
    if "Xbyak" in native:
        return "oneDNN JIT code"
    if "mkl" in native:
        return "MKL buffers"
    if "alloc_cpu" in native or "DefaultCPUAllocator" in native:
        return f"torch tensors at {where}"
    if "PyDataMem" in native:
        return f"numpy at {where}"
    if "PyObject" in native or "pymalloc" in native:
        return "Python objects"
    return f"other at {where}"


def held(path: str) -> collections.Counter:
    import memray

    out: collections.Counter = collections.Counter()
    for record in memray.FileReader(path).get_leaked_allocation_records(merge_threads=True):
        out[kind(record)] += record.size
    return out


def run(n: int, cases, threads: int, capture: str) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="memoir-heap-") as state:
        proc = start(state, port, threads, launcher=("-c", TRACKED, capture))
        try:
            for i, case in enumerate(cases[:n]):
                r = httpx.post(f"http://127.0.0.1:{port}/edit", timeout=600,
                               json={"prompt": case.prompt, "target_new": case.target, "id": f"h{i}"})
                r.raise_for_status()
            time.sleep(2)
            rss = rss_anon(proc.pid)
            proc.send_signal(signal.SIGUSR2)
            time.sleep(5)
        finally:
            stop(proc)
    return rss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", default="20,140", help="two edit counts")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    small, large = (int(x) for x in args.edits.split(","))
    cases = load_cases(args.data)
    cases = (cases * (large // len(cases) + 1))[:large]
    bench = common.Run("heap_growth", vars(args))
    threads = common.threads()
    with tempfile.TemporaryDirectory(prefix="memoir-heap-captures-") as tmp:
        rss, kinds = {}, {}
        for n in (small, large):
            capture = os.path.join(tmp, f"heap_{n}.bin")
            rss[n] = run(n, cases, threads, capture)
            kinds[n] = held(capture)
            print(f"{n} edits: RssAnon {rss[n] / 2**20:.0f} MB, held {sum(kinds[n].values()) / 2**20:.0f} MB", flush=True)
    extra = large - small
    grown = {k: kinds[large][k] - kinds[small][k] for k in set(kinds[small]) | set(kinds[large])}
    rows = [{"kind": k, "held_small_mb": kinds[small][k] / 2**20, "held_large_mb": kinds[large][k] / 2**20,
             "kb_per_edit": v / extra / 1024} for k, v in sorted(grown.items(), key=lambda kv: -kv[1])[:15]]
    print(common.table(rows, ["kind", "held_small_mb", "held_large_mb", "kb_per_edit"]))
    held_per_edit = sum(grown.values()) / extra
    rss_per_edit = (rss[large] - rss[small]) / extra
    print(f"per extra edit: held {held_per_edit / 1024:.1f} KB, RssAnon {rss_per_edit / 1024:.1f} KB (under tracking)")
    bench.finish(args.out, rows=rows, held_per_edit=held_per_edit, rss_anon_per_edit=rss_per_edit,
                 rss_anon={str(k): v for k, v in rss.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
