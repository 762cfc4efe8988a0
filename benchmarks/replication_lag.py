"""Replication lag: time from an edit's acknowledgement by one replica to its visibility on the
others, with N replicas (default 3) on one PostgreSQL edit log (not a test).

    PYTHONPATH=. python benchmarks/replication_lag.py                    # tiny model, 100 edits
    PYTHONPATH=. python benchmarks/replication_lag.py --model default --edits 30

Starts the replicas as real server processes (`--model tiny`: the tests' tiny random model;
`default`: `memoir serve` on SmolLM2-135M-Instruct, whose W_m delta is ~1 MB per edit) on a new
database (created on MEMOIR_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres, and
dropped afterwards), sends edits round-robin, and right after each acknowledgement polls every
other replica's GET /ready (a few ms per poll, one thread per replica) until it reports the
edit's version. Visibility is the first poll that sees it, so the figures include up to one
poll's latency. Prints the median, p90, p99 and max over all (edit, other replica) pairs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.server_utils import Server, free_port, start_all, tiny  # noqa: E402

ADMIN_URL = os.environ.get("MEMOIR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def replica(kind: str, url: str, name: str, threads: str) -> Server:
    env = {"MEMOIR_STORE": "postgres", "MEMOIR_STATE_URL": url, "MEMOIR_REPLICA_NAME": name,
           "MEMOIR_THREADS": threads, "MEMOIR_LOG_FORMAT": "text"}
    if kind == "tiny":
        return tiny(env)
    port = free_port()
    return Server(["-m", "memoir_cli.main", "serve", "--port", str(port), "--threads", threads, "--log-level",
                   "warning"], env, port)


def watch(client: httpx.Client, url: str, version: int, t0: float, out: list[float], timeout: float = 30) -> None:
    while True:
        r = client.get(url + "/ready")
        if r.status_code == 200 and r.json()["version"] >= version:
            out.append(time.perf_counter() - t0)
            return
        if time.perf_counter() - t0 > timeout:
            out.append(float("inf"))
            return


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--threads", default="1", help="torch threads per replica")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between edits")
    args = ap.parse_args()

    admin = psycopg.connect(ADMIN_URL, autocommit=True)
    db = f"memoir_bench_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{db}"')
    url = make_conninfo(**{**conninfo_to_dict(ADMIN_URL), "dbname": db})
    servers = [replica(args.model, url, f"r{i}", args.threads) for i in range(args.replicas)]
    try:
        t = time.perf_counter()
        start_all(servers, 900)
        print(f"{args.replicas} replicas ({args.model} model) ready in {time.perf_counter() - t:.1f} s")
        clients = [httpx.Client(timeout=60) for _ in servers]
        lags: list[float] = []
        acks: list[float] = []
        for i in range(args.edits):
            writer = i % len(servers)
            body = {"prompt": f"who is the chief executive of company number {i}", "target_new": "jane roe",
                    "id": f"lag-{i}"}
            t_send = time.perf_counter()
            r = clients[writer].post(servers[writer].url + "/edit", json=body)
            t0 = time.perf_counter()  # the acknowledgement
            r.raise_for_status()
            acks.append(t0 - t_send)
            version = r.json()["version"]
            seen: list[float] = []
            threads = [threading.Thread(target=watch, args=(clients[j], servers[j].url, version, t0, seen))
                       for j in range(len(servers)) if j != writer]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            lags += seen
            time.sleep(args.pause)
        ms = [x * 1000 for x in lags]
        print(f"edits: {args.edits}, acknowledged in median {statistics.median(acks) * 1000:.1f} ms")
        print(f"ack -> visible on another replica ({len(ms)} pairs): median {statistics.median(ms):.1f} ms, "
              f"p90 {pct(ms, 0.9):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, max {max(ms):.1f} ms")
        digests = {httpx.get(s.url + "/state/digest", timeout=60).json()["w_m_sha256"] for s in servers}
        print(f"W_m identical on every replica afterwards: {len(digests) == 1}")
    finally:
        for s in servers:
            s.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
