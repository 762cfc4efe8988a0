"""Restart with many stored edits, through the real server (issue 20).

    PYTHONPATH=. python benchmarks/restart_scale.py --edits 10000 --store /tmp/restart --keep
    PYTHONPATH=. python benchmarks/restart_scale.py --store /tmp/restart --keep      # reuse that store
    PYTHONPATH=. python benchmarks/restart_scale.py --tiny --edits 40                # smoke run

The issue's target: with 10,000 edits stored the server is ready again within 60 s, and its RSS
after the restart is no higher than before it.

Building 10,000 trained edits takes hours, so the store is made in two steps. Three real ZsRE
edits go through a real server over HTTP (so their records, deltas and guard inputs are what
training makes); then N-3 copies of them, each on its own random columns, are written through
DirectoryStore.log_edit (the store's own door: journal, fsync, commit marker), and a snapshot
is taken, as a long-running server would have. A copy costs what a real edit costs on disk and
at start-up (1 MB of delta, its guard factor, its registry entry); what it says is nonsense,
which a restart does not read.

Then the measurement: start `memoir serve` on the store (MEMOIR_STORE=dir), time to /ready and
RSS at ready; 3 more edits over HTTP and RSS; stop, start again, time to /ready and RSS. On a
reused store those 3 prompts supersede the 3 posted by the run before: the count stays.

--resnapshot rewrites the store's snapshot with the code under test (one synthetic edit rolled
back and logged again, then a snapshot), so a store made by older code is read the new way.
--profile starts the server once more under cProfile and prints where start-up goes.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from edit_memory import DATA, free_port, metric, post_edit, rss, start, stop  # noqa: E402

from memoir_core.datasets import load_cases  # noqa: E402

REAL = 3  # edits trained through the server; the rest are copies of them
TINY = ("-m", "tests.support.tiny_serve")  # the tests' random model, served as `memoir serve` serves


class Server:
    def __init__(self, store: str, tiny: bool, threads: int):
        self.store, self.tiny, self.threads = store, tiny, threads

    def start(self, launcher: tuple[str, ...] | None = None) -> tuple[object, float, str]:
        """(process, seconds to ready, url)."""
        port = free_port()
        env = {"MEMOIR_STORE": "dir", "MEMOIR_STATE_DIR": self.store}
        if self.tiny:
            env.update(MEMOIR_PORT=str(port))
        launcher = launcher or (TINY if self.tiny else ("-m", "memoir_cli.main"))
        t0 = time.monotonic()
        proc = start(self.store, port, self.threads, launcher=launcher, env=env)
        return proc, time.monotonic() - t0, f"http://127.0.0.1:{port}"


def post_edits(url: str, cases, prefix: str) -> list[float]:
    return [post_edit(url, case, f"{prefix}{i}") for i, case in enumerate(cases)]


def copies(store_dir: str, n: int, seed: int = 0) -> float:
    """Fill the store up to n live edits with copies of its edits on random columns; then a snapshot.
    Returns the seconds it took."""
    import numpy as np

    from memoir_core.store.directory import DirectoryStore

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    # no background snapshot while filling: one at the end, as after a long run
    store = DirectoryStore(store_dir, background=False)
    try:
        loaded = store.load()
        m = loaded.manifest
        bases = [(r, r.delta.clone(), r.inputs.clone() if r.has_inputs else None) for r in loaded.edits]
        live = len(loaded.edits)
        for i in range(live, n):
            base, delta, inputs = bases[i % len(bases)]
            idx = np.sort(rng.choice(m.width, m.k, replace=False))
            route = None if base.route is None else np.sort(rng.choice(m.width, m.k, replace=False)).tolist()
            rec = _copy(base, f"copy{i}", store.version + 1, idx, route, delta, inputs)
            store.log_edit(rec)
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} edits stored ({time.perf_counter() - t0:.0f} s)", flush=True)
        store.snapshot()
    finally:
        store.close()
    return time.perf_counter() - t0


def _copy(base, edit_id, version, idx, route, delta, inputs):
    import dataclasses

    import torch

    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name not in ("delta", "inputs", "idx")}
    fields.update(id=edit_id, version=version, supersedes=None, created_at=time.time(), keys=[], route=route,
                  idx=torch.as_tensor(idx, dtype=torch.int64), delta=delta, inputs=inputs)
    return type(base)(**fields)


def resnapshot(store_dir: str) -> float:
    """Rewrite the snapshot with this code: the newest edit rolled back and logged again (the
    version moves, so there is something to snapshot), then a snapshot."""
    from memoir_core.store.directory import DirectoryStore

    t0 = time.perf_counter()
    store = DirectoryStore(store_dir, background=False)
    try:
        loaded = store.load()
        last = loaded.edits[-1]
        delta, inputs = last.delta.clone(), last.inputs.clone() if last.has_inputs else None
        store.log_removal(last.id, store.version + 1)
        store.log_edit(_copy(last, last.id, store.version + 1, last.idx.numpy(), last.route, delta, inputs))
        store.snapshot()
    finally:
        store.close()
    return time.perf_counter() - t0


def holds_memory(store_dir: str) -> bool:
    from memoir_core.store import reader

    return reader.read_manifest(store_dir) is not None


def profile(server: Server, top: int = 30) -> dict:
    """The server's start-up (app.service.runtime.Runtime._load, which `memoir serve` runs in a
    thread cProfile would not see) in this process under cProfile; prints where it goes."""
    import cProfile
    import io

    os.environ.update(MEMOIR_STORE="dir", MEMOIR_STATE_DIR=server.store, MEMOIR_THREADS=str(server.threads))
    from app.service.runtime import Runtime
    from app.settings import Settings

    builder = None
    if server.tiny:
        from tests.support.tiny_server import builder as tiny_builder

        builder = tiny_builder()
    settings = Settings()
    runtime = Runtime(settings.model_copy(update={"served_model_name": "tiny"}) if server.tiny else settings, builder)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(runtime._load)
    seconds = time.perf_counter() - t0
    runtime.stop()
    if runtime.status != "ready":
        raise SystemExit(f"start-up failed under the profiler: {runtime.error}")
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(top)
    print(f"start-up in this process under cProfile: {seconds:.1f} s; where it went (cumulative):")
    print(text.getvalue())
    return {"seconds": seconds, "top": text.getvalue()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=10_000, help="live edits in the store before the restart")
    ap.add_argument("--store", default=None, help="the state directory (default: a temporary one); an existing "
                                                  "store is reused as it is")
    ap.add_argument("--keep", action="store_true", help="keep the store (to measure again without rebuilding it)")
    ap.add_argument("--resnapshot", action="store_true", help="rewrite the store's snapshot with this code first")
    ap.add_argument("--profile", action="store_true", help="then start once more under cProfile")
    ap.add_argument("--tiny", action="store_true", help="the tests' random model (a smoke run: measures nothing)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    bench = common.Run("restart_scale" + ("_tiny" if args.tiny else ""), vars(args))
    threads = common.threads()
    cases = load_cases(args.data, limit=2 * REAL)
    store = args.store or tempfile.mkdtemp(prefix="memoir-restart-")
    server = Server(store, args.tiny, threads)
    results: dict = {}
    try:
        if not holds_memory(store):
            proc, seconds, url = server.start()
            try:
                results["real_edit_seconds"] = post_edits(url, cases[:REAL], "real")
            finally:
                stop(proc)
            results["copy_seconds"] = copies(store, args.edits)
            print(f"store built: {args.edits} edits ({REAL} trained, the rest copies) in "
                  f"{results['copy_seconds']:.0f} s after the trained ones", flush=True)
        elif args.resnapshot:
            results["resnapshot_seconds"] = resnapshot(store)
            print(f"snapshot rewritten in {results['resnapshot_seconds']:.0f} s", flush=True)
        results["store_bytes"] = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
        results["load_before_start"] = common.loadavg()
        print(f"store: {results['store_bytes'] / 2**30:.1f} GiB; load {results['load_before_start']}", flush=True)

        proc, results["ready_seconds"], url = server.start()
        try:
            results["rss_ready"] = rss(proc.pid)
            results["edits_before"] = int(metric(url, "memoir:active_edits"))
            print(f"ready in {results['ready_seconds']:.1f} s with {results['edits_before']} edits, RSS "
                  f"{results['rss_ready'] / 2**20:.0f} MiB", flush=True)
            results["edit_seconds"] = post_edits(url, cases[REAL:], f"after{time.time_ns()}-")
            results["rss_after_edits"] = rss(proc.pid)
        finally:
            stop(proc)
        print(f"after {REAL} edits: RSS {results['rss_after_edits'] / 2**20:.0f} MiB", flush=True)
        proc, results["restart_seconds"], url = server.start()
        try:
            results["rss_after_restart"] = rss(proc.pid)
            results["edits_after"] = int(metric(url, "memoir:active_edits"))
        finally:
            stop(proc)
        print(f"restart with {results['edits_after']} edits: ready in {results['restart_seconds']:.1f} s, RSS "
              f"{results['rss_after_restart'] / 2**20:.0f} MiB (before the restart: "
              f"{results['rss_after_edits'] / 2**20:.0f} MiB); load {common.loadavg()}", flush=True)
        if args.profile:
            results["profile"] = profile(server)
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    results["target"] = {"restart_seconds_max": 60, "met_time": results["restart_seconds"] <= 60,
                         "met_rss": results["rss_after_restart"] <= results["rss_after_edits"]}
    results["rows"] = [{"step": "first start", "seconds": results["ready_seconds"],
                        "rss_mib": results["rss_ready"] / 2**20},
                       {"step": f"after {REAL} edits", "seconds": sum(results["edit_seconds"]),
                        "rss_mib": results["rss_after_edits"] / 2**20},
                       {"step": "restart", "seconds": results["restart_seconds"],
                        "rss_mib": results["rss_after_restart"] / 2**20}]
    print(common.table(results["rows"]))
    bench.finish(args.out, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
