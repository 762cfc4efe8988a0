"""Speed and size of the durable state store at the default model's shapes (not a test).

    PYTHONPATH=. python benchmarks/state_store.py --dir /tmp/memoir-bench --edits 1000

Prints: log_edit latency (fsync included), bytes per edit on disk, snapshot time, and start-up
(load) time with and without a snapshot. Shapes default to SmolLM2-135M (d_out 576, D 1536,
k 440). The directory is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

import numpy as np
import torch

from memoir_core.basis import Basis
from memoir_core.records import EditRecord
from memoir_core.state import Manifest, restore  # noqa: F401  (restore: see --restore)
from memoir_core.store import DirectoryStore


def make_record(version: int, d_out: int, width: int, k: int, rng) -> EditRecord:
    idx = torch.from_numpy(np.sort(rng.choice(width, size=k, replace=False)).astype(np.int64))
    delta = torch.from_numpy(rng.integers(-(2**20), 2**20, size=(d_out, k), dtype=np.int32))
    return EditRecord(id=f"edit-{version:06d}", prompt=f"Who is the CEO of company {version}?", target_new="Jane Roe",
                      metadata={"ticket": f"T-{version}"}, author="bench", created_at=time.time(), version=version,
                      idx=idx, delta=delta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/memoir-state-bench")
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--d-out", type=int, default=576)
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--k", type=int, default=440)
    args = ap.parse_args()
    d_out, width, k = args.d_out, args.width, args.k
    shutil.rmtree(args.dir, ignore_errors=True)
    rng = np.random.default_rng(0)
    records = [make_record(v, d_out, width, k, rng) for v in range(1, args.edits + 1)]
    manifest = Manifest("bench", "0" * 32, 25, k, width, d_out, {"centre": True})
    basis = Basis(torch.randperm(width), torch.randn(width), ["I think"])
    try:
        # no background snapshots: the replay figure below is then for all N edits
        with DirectoryStore(args.dir, background=False) as store:
            store.create(manifest, basis)
            times = []
            for rec in records:
                t0 = time.perf_counter()
                store.log_edit(rec)
                times.append(time.perf_counter() - t0)
        jbytes = sum(os.path.getsize(os.path.join(args.dir, "journal", n)) for n in os.listdir(os.path.join(args.dir, "journal")))
        times_ms = sorted(t * 1e3 for t in times)
        print(f"log_edit (write + fsync), {len(times)} edits of d_out {d_out} x k {k}: "
              f"median {statistics.median(times_ms):.2f} ms, p90 {times_ms[int(0.9 * len(times_ms))]:.2f} ms, "
              f"max {times_ms[-1]:.2f} ms")
        print(f"journal bytes per edit: {jbytes / len(records) / 1e6:.3f} MB (delta alone {d_out * k * 4 / 1e6:.3f} MB)")

        t0 = time.perf_counter()
        with DirectoryStore(args.dir, background=False) as store:
            loaded = store.load(manifest)
        print(f"load {len(loaded.edits)} edits from the journal (no snapshot): {time.perf_counter() - t0:.2f} s")

        with DirectoryStore(args.dir, background=False) as store:
            store.load()
            t0 = time.perf_counter()
            store.snapshot()
            snap_s = time.perf_counter() - t0
        snap_dir = os.path.join(args.dir, "snapshots", os.listdir(os.path.join(args.dir, "snapshots"))[0])
        sbytes = sum(os.path.getsize(os.path.join(snap_dir, n)) for n in os.listdir(snap_dir))
        print(f"snapshot of {len(records)} live edits: {snap_s:.2f} s, {sbytes / 1e6:.1f} MB "
              f"({sbytes / len(records) / 1e6:.3f} MB per edit)")

        t0 = time.perf_counter()
        with DirectoryStore(args.dir, background=False) as store:
            loaded = store.load(manifest)
        print(f"load {len(loaded.edits)} edits from the snapshot: {time.perf_counter() - t0:.2f} s")

        # background snapshots on: latency of log_edit while they run
        shutil.rmtree(args.dir)
        with DirectoryStore(args.dir, snapshot_min_bytes=64 << 20) as store:
            store.create(manifest, basis)
            times = []
            for rec in records:
                t0 = time.perf_counter()
                store.log_edit(rec)
                times.append(time.perf_counter() - t0)
            store.wait_snapshot()
            snaps = store.snapshot_version
        times_ms = sorted(t * 1e3 for t in times)
        print(f"log_edit with background snapshots (every >= 64 MB / snapshot size; last at version {snaps}): "
              f"median {statistics.median(times_ms):.2f} ms, p90 {times_ms[int(0.9 * len(times_ms))]:.2f} ms, "
              f"p99 {times_ms[int(0.99 * len(times_ms))]:.2f} ms, max {times_ms[-1]:.2f} ms")
        t0 = time.perf_counter()
        with DirectoryStore(args.dir, background=False) as store:
            loaded = store.load(manifest)
        print(f"load {len(loaded.edits)} edits (snapshot at {snaps} + journal tail): {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
