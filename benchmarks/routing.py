"""Routing at scale: best-match time per query and memory per stored mask (issue 6, item 3).

    PYTHONPATH=. python benchmarks/routing.py            # 1k, 10k, 100k, 1M masks
    PYTHONPATH=. python benchmarks/routing.py --quick    # 1k, 10k

Masks are synthetic: uniformly random k-subsets of D columns with the default model's k and D
(440 of 1536), stored through MaskBank.restore under 16-character ids like the server's.
Queries are fresh random masks (half) and stored masks (half). For each query, interleaved:
the baseline (numpy: AND + np.bitwise_count over the same packed bank, the fallback without
numba), MaskBank.best on one thread as routing calls it (the best match and the runner-up at
config.gap_rank; the figure the targets are judged on) and, from 64k masks,
the bank's parallel scan kernel on all cores (MaskBank.best uses it from PARALLEL_FROM masks). Bytes per mask count the
packed bits and the bank's bookkeeping (slot -> id list, per-slot id hashes; id strings apart).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", str(os.cpu_count() or 1))  # so 1 and all cores can both be timed

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from memoir_core import maskbank  # noqa: E402
from memoir_core.config import MemoirConfig  # noqa: E402
from memoir_core.maskbank import MaskBank, pack  # noqa: E402

TARGET_MS = {100_000: 5.0, 1_000_000: 50.0}
TARGET_BYTES = 256


@njit  # no cache: the smoke test loads this file under a made-up module name, which a cache cannot find again
def _random_bits(n, width, k, words, seed):  # pragma: no cover - compiled
    """n packed masks of exactly k random columns each (partial Fisher-Yates per row)."""
    np.random.seed(seed)
    out = np.zeros((n, words), dtype=np.uint64)
    perm = np.arange(width)
    for i in range(n):
        for j in range(k):
            r = j + np.random.randint(width - j)
            perm[j], perm[r] = perm[r], perm[j]
            c = perm[j]
            out[i, c >> 6] |= np.uint64(1) << np.uint64(c & 63)
    return out


def bookkeeping_bytes(bank: MaskBank) -> tuple[int, int]:
    """What the bank keeps beside its bit matrix (the slot -> id list and the per-slot id
    hashes) -> (without, with) the id strings.

    The id strings are the edit registry's own objects in a Memoir (the bank holds references),
    so the figure without them is what the bank adds."""
    n = len(bank)
    total = sys.getsizeof(bank._ids) + bank._keys[:n].nbytes
    strings = sum(sys.getsizeof(eid) for eid in set(bank._ids))
    return total, total + strings


def numpy_best(bits: np.ndarray, q: np.ndarray) -> tuple[int, int]:
    counts = np.bitwise_count(bits & q).sum(axis=1)
    i = int(counts.argmax())
    return i, int(counts[i])


def measure(n: int, width: int, k: int, queries: int, rng) -> dict:
    words = (width + 63) // 64
    t0 = time.perf_counter()
    bits = _random_bits(n, width, k, words, int(rng.integers(2**31)))
    ids = [f"{i:016x}" for i in range(n)]
    bank = MaskBank.restore(width, k, ids, bits)
    build_s = time.perf_counter() - t0
    fresh = [np.sort(rng.choice(width, size=k, replace=False)) for _ in range(queries - queries // 2)]
    stored = [bank.mask_of(ids[int(i)]) for i in rng.integers(n, size=queries // 2)]
    qs = fresh + stored
    cores = os.cpu_count() or 1
    # the parallel kernel is timed directly (MaskBank.best takes it only from PARALLEL_FROM masks)
    parallel = maskbank.HAVE_NUMBA and n >= 1 << 16 and cores > 1
    times = {"numpy": [], "serial": [], "parallel": []}
    agree = 0
    view = bank._bits[:n]
    rank = MemoirConfig().gap_rank  # routing asks for the runner-up too (config.min_gap)
    for q in qs:  # warm-up (compilation, page faults) with every path once
        bank.best(q[None], rank=rank)
        break
    for q in qs:
        packed = pack(q, width)[0]
        t0 = time.perf_counter()
        i_np, c_np = numpy_best(view, packed)
        times["numpy"].append(time.perf_counter() - t0)
        numba.set_num_threads(1)
        t0 = time.perf_counter()
        match = bank.best(q[None], rank=rank)[0]
        times["serial"].append(time.perf_counter() - t0)
        agree += abs(match.overlap - c_np / k) < 1e-9
        if parallel:
            numba.set_num_threads(cores)
            t0 = time.perf_counter()
            out = np.empty(n, dtype=np.uint64)
            maskbank._overlap_counts_parallel(view, pack(q, width)[0], out)
            int(out.argmax())
            times["parallel"].append(time.perf_counter() - t0)
            numba.set_num_threads(1)
    book, book_ids = bookkeeping_bytes(bank)
    row = {
        "masks": n,
        "best_ms_median": 1e3 * common.summary(times["serial"])["median"],
        "best_ms_p90": 1e3 * common.pct(times["serial"], 90),
        "numpy_ms_median": 1e3 * common.summary(times["numpy"])["median"],
        "speedup_vs_numpy": common.summary(times["numpy"])["median"] / common.summary(times["serial"])["median"],
        "best_ms_all_cores": 1e3 * common.summary(times["parallel"])["median"] if parallel else float("nan"),
        "bits_B_per_mask": bank.bytes_per_mask,
        "total_B_per_mask": (view.nbytes + book) / n,
        "with_id_strings_B_per_mask": (view.nbytes + book_ids) / n,
        "agree": agree / len(qs),
        "build_s": build_s,
    }
    target = TARGET_MS.get(n)
    row["target_ms"] = target if target else float("nan")
    row["time_met"] = bool(row["best_ms_median"] <= target) if target else ""
    row["bytes_met"] = bool(row["total_B_per_mask"] <= TARGET_BYTES)
    row["raw_ms"] = {key: [1e3 * t for t in v] for key, v in times.items() if v}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--quick", action="store_true", help="1k and 10k masks, 10 queries")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--width", type=int, default=1536, help="D (default: SmolLM2-135M's MLP width)")
    ap.add_argument("--k", type=int, default=440, help="k (default: the default model's, 2/7 of D)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/routing.json)")
    args = ap.parse_args(argv)
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    queries = 10 if args.quick else args.queries
    run = common.Run("routing" + ("_quick" if args.quick else ""), vars(args))
    run.data["numba"] = {"version": numba.__version__, "threads_available": numba.config.NUMBA_NUM_THREADS,
                         "parallel_from": maskbank.PARALLEL_FROM}
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        rows.append(measure(n, args.width, args.k, queries, rng))
        print(f"  {n} masks: {rows[-1]['best_ms_median']:.3f} ms", flush=True)
    cols = ["masks", "best_ms_median", "best_ms_p90", "numpy_ms_median", "speedup_vs_numpy", "best_ms_all_cores",
            "bits_B_per_mask", "total_B_per_mask",
            "with_id_strings_B_per_mask", "target_ms", "time_met", "bytes_met"]
    print(common.table(rows, cols))
    run.finish(args.out if not args.quick or args.out else None, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
