"""RSS per stored edit, through the real server with a durable state directory (issue 20).

    PYTHONPATH=. python benchmarks/edit_memory.py --edits 1000     # the issue's measurement
    PYTHONPATH=. python benchmarks/edit_memory.py --edits 60       # a short run under load

Starts `memoir serve` (default model) on a fresh state directory, posts --warmup ZsRE edits
(the first edits allocate training buffers, the context cache and the allocator's arenas once),
reads the server's RSS, posts --edits more, reads it again, and reports the growth per edit.
Then it stops the server, starts it again on the same directory and reads RSS once ready: a
restart must not read the deltas into RAM.

Allocator noise: glibc malloc keeps freed memory in its arenas and torch its own caches, so RSS
moves by a few MB at a time whatever the edits hold; the growth per edit is only meaningful
over many edits (the issue asks for 1,000). /metrics' memoir:edit_tensor_bytes is reported
beside it: the tensor bytes the live edits hold, which has no such noise. So are glibc's own
counts at each reading (memoir:host_heap_*): bytes handed out and not had back ("held") against
free bytes kept in the arenas, which is the allocator noise named.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import httpx  # noqa: E402

from memoir_core.datasets import load_cases  # noqa: E402

DATA = Path(os.environ.get("MEMOIR_DATA", "/work/shared/data")) / "zsre" / "zsre_edit_dev_500.json"


def heap(url: str) -> dict[str, float] | None:
    """glibc's counts from /metrics (None where the server runs without glibc)."""
    names = {"in_use": "memoir:host_heap_in_use_bytes", "free": "memoir:host_heap_free_bytes",
             "mmapped": "memoir:host_heap_mmapped_bytes"}
    counts = {key: metric(url, name) for key, name in names.items()}
    return None if any(v != v for v in counts.values()) else counts


def held(counts: dict[str, float]) -> float:
    return counts["in_use"] + counts["mmapped"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    """Resident bytes of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def start(state: str, port: int, threads: int, launcher: tuple[str, ...] = ("-m", "memoir_cli.main"),
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """`memoir serve` on a state directory, once ready; launcher: what runs the CLI (heap_growth.py
    runs it under a memory tracker); env: extra variables (restart_scale.py forces the store kind)."""
    env = {**os.environ, "PYTHONPATH": str(common.REPO), "MEMOIR_THREADS": str(threads), "MEMOIR_LOG_LEVEL": "warning",
           **(env or {})}
    proc = subprocess.Popen([sys.executable, *launcher, "serve", "--port", str(port), "--state-dir",
                             state, "--threads", str(threads), "--log-level", "warning"], cwd=common.REPO, env=env)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 900:
        if proc.poll() is not None:
            raise SystemExit("the server exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server was not ready in time")


def post_edit(url: str, case, edit_id: str) -> float:
    """One case through POST /edit; the seconds until its answer."""
    t0 = time.perf_counter()
    r = httpx.post(url + "/edit", json={"prompt": case.prompt, "target_new": case.target, "id": edit_id}, timeout=900)
    r.raise_for_status()
    return time.perf_counter() - t0


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--every", type=int, default=50, help="read RSS every this many edits (the trace)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cases = load_cases(args.data)
    need = args.warmup + args.edits
    cases = (cases * (need // len(cases) + 1))[:need]  # past the file's end: the same facts again, new ids
    run = common.Run("edit_memory", vars(args))
    port, threads = free_port(), common.threads()
    with tempfile.TemporaryDirectory(prefix="memoir-edit-memory-") as state:
        proc = start(state, port, threads)
        url = f"http://127.0.0.1:{port}"
        try:
            ready = rss(proc.pid)
            seconds, trace = [], []
            heap_trace = []
            for i, case in enumerate(cases):
                if i == args.warmup:
                    warm, warm_bytes = rss(proc.pid), metric(url, "memoir:edit_tensor_bytes")
                    warm_heap = heap(url)
                seconds.append(post_edit(url, case, f"m{i}"))
                if (i + 1 - args.warmup) % args.every == 0 and i + 1 > args.warmup:
                    trace.append((i + 1 - args.warmup, rss(proc.pid)))
                    heap_trace.append((i + 1 - args.warmup, heap(url)))
            end, end_bytes = rss(proc.pid), metric(url, "memoir:edit_tensor_bytes")
            end_heap = heap(url)
            per_edit_planned = metric(url, "memoir:edit_ram_bytes_per_edit")
        finally:
            stop(proc)
        proc = start(state, port, threads)
        try:
            restarted = rss(proc.pid)
            restarted_bytes = metric(url, "memoir:edit_tensor_bytes")
        finally:
            stop(proc)
    growth = (end - warm) / args.edits
    results = {"rss_ready": ready, "rss_after_warmup": warm, "rss_end": end, "rss_after_restart": restarted,
               "rss_growth_per_edit": growth, "edit_tensor_bytes_warm": warm_bytes, "edit_tensor_bytes_end": end_bytes,
               "edit_tensor_bytes_after_restart": restarted_bytes,
               "edit_tensor_bytes_per_edit": (end_bytes - warm_bytes) / args.edits,
               "planned_ram_per_edit": per_edit_planned, "edit_seconds": common.summary(seconds),
               "rss_trace": trace, "heap_after_warmup": warm_heap, "heap_end": end_heap, "heap_trace": heap_trace}
    if warm_heap and end_heap:
        results["held_growth_per_edit"] = (held(end_heap) - held(warm_heap)) / args.edits
        results["free_heap_growth_per_edit"] = (end_heap["free"] - warm_heap["free"]) / args.edits
    mb = 1 / 2**20
    print(f"RSS ready {ready * mb:.0f} MB, after {args.warmup} warm-up edits {warm * mb:.0f} MB, after "
          f"{args.edits} more {end * mb:.0f} MB: {growth / 1024:.1f} KB per edit (allocator noise: a few MB "
          f"either way); after a restart with {need} edits {restarted * mb:.0f} MB")
    print("RSS after warm-up + n edits: " + ", ".join(f"{n}: {b * mb:.0f} MB" for n, b in trace))
    if "held_growth_per_edit" in results:
        print(f"malloc's count, after warm-up -> end: held (in use + mmapped) {held(warm_heap) * mb:.0f} -> "
              f"{held(end_heap) * mb:.0f} MB, {results['held_growth_per_edit'] / 1024:.1f} KB per edit; free in "
              f"the arenas {warm_heap['free'] * mb:.0f} -> {end_heap['free'] * mb:.0f} MB (allocator noise)")
    print(f"tensor bytes held per edit (metrics): {results['edit_tensor_bytes_per_edit']:.0f}; planned RAM per "
          f"edit: {per_edit_planned:.0f}")
    run.finish(args.out, **results)


if __name__ == "__main__":
    main()
