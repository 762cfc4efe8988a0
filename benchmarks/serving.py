"""Serving under load: N concurrent streaming clients against the real server (issue 6, item 4).

    PYTHONPATH=. python benchmarks/serving.py                # 1, 4, 16 clients; 2 repetitions of 30 s windows
    PYTHONPATH=. python benchmarks/serving.py --quick        # 1 and 4 clients, 6 s windows
    PYTHONPATH=. python benchmarks/serving.py --url http://127.0.0.1:8000   # a server already running

Starts `memoir serve` (default model, MEMOIR_STORE=memory: nothing persists) on a free port
with MEMOIR_THREADS threads (1 unless set). Each window runs N clients, each sending streaming
POST /generate requests back to back (greedy, --tokens new tokens, prompts: ZsRE dev locality
questions, unrelated to the edits) until the window ends; in-flight requests finish. Per
request: time to the first token (first SSE event with text), end-to-end time, new tokens,
and whether it failed (HTTP error, exception, or an error event). Each concurrency runs once
without and once with an edit stream (one client posting ZsRE dev edits one after another
through POST /edit for the whole window), the two alternating which goes first from one
repetition to the next so load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(server, path: str, timeout: float) -> float:
    """Seconds until `server.url + path` answers 200; exits with the server's log if it dies
    first, and stops it if it is not ready in time."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server.proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{Path(server.log.name).read_text()[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise SystemExit("the server was not ready in time")


class Server:
    def __init__(self, model: str, threads: int, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(common.REPO), "MEMOIR_STORE": "memory", "MEMOIR_THREADS": str(threads),
               "MEMOIR_LOG_LEVEL": "warning", **(env or {})}
        if model == "tiny":  # the tests' random model: a smoke run only
            args = ["-m", "uvicorn", "tests.support.tiny_server:app", "--factory", "--host", "127.0.0.1",
                    "--port", str(self.port), "--log-level", "warning"]
        else:
            args = ["-m", "memoir_cli.main", "serve", "--port", str(self.port), "--threads", str(threads),
                    "--log-level", "warning"] + ([] if model == "default" else ["--model", model])
        self.log = tempfile.NamedTemporaryFile(prefix="memoir-bench-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, *args], cwd=common.REPO, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 900) -> float:
        return wait_ready(self, "/ready", timeout)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


async def one_request(c: httpx.AsyncClient, prompt: str, tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, n, error = None, 0, None
    try:
        async with c.stream("POST", "/generate", json={"prompt": prompt, "max_new_tokens": tokens,
                                                       "temperature": 0, "stream": True}) as r:
            if r.status_code != 200:
                await r.aread()
                error = f"HTTP {r.status_code}"
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        error = str(event["error"])[:200]
                        break
                    if ttft is None and event.get("text"):
                        ttft = time.perf_counter() - t0
                    if "usage" in event:
                        n = event["usage"]["completion_tokens"]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
    e2e = time.perf_counter() - t0
    return {"ttft": ttft if ttft is not None else e2e, "e2e": e2e, "tokens": n, "error": error}


async def client(c, prompts: list[str], offset: int, tokens: int, deadline: float, out: list) -> None:
    i = offset
    while time.perf_counter() < deadline:
        out.append(await one_request(c, prompts[i % len(prompts)], tokens))
        i += 7


async def edit_stream(c, records: list[dict], counter: list[int], deadline: float, out: list) -> None:
    while time.perf_counter() < deadline:
        r = records[counter[0] % len(records)]
        eid = f"bench-{counter[0]}"
        counter[0] += 1
        t0 = time.perf_counter()
        try:
            resp = await c.post("/edit", json={"prompt": r["prompt"], "target_new": r["target"], "id": eid})
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append({"seconds": time.perf_counter() - t0, "ok": ok})


async def window(url: str, clients: int, edits: bool, seconds: float, prompts, records, counter, tokens) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        results: list[dict] = []
        edit_results: list[dict] = []
        t0 = time.perf_counter()
        deadline = t0 + seconds
        tasks = [client(c, prompts, i, tokens, deadline, results) for i in range(clients)]
        if edits:
            tasks.append(edit_stream(c, records, counter, deadline, edit_results))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return {"results": results, "edits": edit_results, "wall": wall}


def summarise(clients: int, edits: bool, windows: list[dict]) -> dict:
    res = [r for w in windows for r in w["results"]]
    ok = [r for r in res if r["error"] is None]
    wall = sum(w["wall"] for w in windows)
    eds = [e for w in windows for e in w["edits"]]
    row = {"clients": clients, "edit_stream": "yes" if edits else "no", "requests": len(res),
           "req_s": len(ok) / wall, "tok_s": sum(r["tokens"] for r in ok) / wall,
           "ttft_p50_ms": 1e3 * common.pct([r["ttft"] for r in ok], 50) if ok else float("nan"),
           "ttft_p99_ms": 1e3 * common.pct([r["ttft"] for r in ok], 99) if ok else float("nan"),
           "e2e_p50_ms": 1e3 * common.pct([r["e2e"] for r in ok], 50) if ok else float("nan"),
           "e2e_p99_ms": 1e3 * common.pct([r["e2e"] for r in ok], 99) if ok else float("nan"),
           "error_rate": (len(res) - len(ok)) / max(1, len(res)), "edits_done": sum(e["ok"] for e in eds),
           "edit_s_median": common.summary([e["seconds"] for e in eds if e["ok"]]).get("median", float("nan")),
           "wall_s": wall, "server_cpu_s": sum(w.get("server_cpu", float("nan")) for w in windows)}
    # tokens per CPU-second of the server: steadier than wall time on a shared machine
    row["tok_per_server_cpu_s"] = sum(r["tokens"] for r in ok) / row["server_cpu_s"] if row["server_cpu_s"] else float("nan")
    errors = sorted({r["error"] for r in res if r["error"]})
    if errors:
        row["errors"] = errors[:5]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (default: start `memoir serve`)")
    ap.add_argument("--model", default="default", help='"default", a Hugging Face id or folder, or "tiny" (smoke run)')
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of one window")
    ap.add_argument("--reps", type=int, default=2, help="windows per (clients, edit stream) pair")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per request")
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, one 6 s window each")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.reps, args.tokens = "1,4", 6.0, 1, 8
    records = json.loads(Path(args.data).read_text())
    prompts = [r["loc"].strip() for r in records[200:300] if r.get("loc")]
    edits = [{"prompt": r["src"], "target": r["alt"]} for r in records[:200] if r.get("src") and r.get("alt")]
    run = common.Run("serving" + ("_quick" if args.quick else ""), vars(args))
    server = None
    url = args.url
    try:
        if url is None:
            server = Server(args.model, common.threads())
            run.data["server_start_s"] = server.wait_ready()
            url = server.url
        run.data["server_threads"] = common.threads()
        asyncio.run(window(url, 1, False, 1.0, prompts, edits, [0], 4))  # warm-up
        levels = [int(x) for x in args.clients.split(",")]
        counter = [0]
        raw: dict[tuple[int, bool], list[dict]] = {}
        for rep in range(args.reps):
            for n in levels:
                order = (False, True) if (rep + n) % 2 == 0 else (True, False)
                for with_edits in order:
                    c0 = server.cpu_seconds() if server else float("nan")
                    w = asyncio.run(window(url, n, with_edits, args.seconds, prompts, edits, counter, args.tokens))
                    w["server_cpu"] = (server.cpu_seconds() if server else float("nan")) - c0
                    raw.setdefault((n, with_edits), []).append(w)
                    print(f"  {n} clients, edit stream {'on' if with_edits else 'off'}: {len(w['results'])} requests, "
                          f"{len(w['edits'])} edits in {w['wall']:.1f} s", flush=True)
        rows = [summarise(n, e, raw[(n, e)]) for n in levels for e in (False, True)]
    finally:
        if server is not None:
            server.stop()
    cols = ["clients", "edit_stream", "requests", "req_s", "tok_s", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms",
            "e2e_p99_ms", "error_rate", "edits_done", "edit_s_median", "tok_per_server_cpu_s"]
    print(common.table(rows, cols))
    by = {(r["clients"], r["edit_stream"]): r for r in rows}
    base1 = by.get((1, "no"))
    targets = {}
    if base1 and (4, "no") in by:
        targets["tok_s_4_clients_over_1"] = by[(4, "no")]["tok_s"] / base1["tok_s"]
        targets["4_clients_ge_1.5x"] = targets["tok_s_4_clients_over_1"] >= 1.5
    for n in levels:
        ratio = by[(n, "yes")]["ttft_p99_ms"] / by[(n, "no")]["ttft_p99_ms"]
        targets[f"ttft_p99_edits_over_none_{n}"] = ratio
        targets[f"ttft_p99_within_2x_{n}"] = ratio <= 2.0
    print("targets:", targets)
    raw_out = {f"{n}_{'edits' if e else 'none'}": [w["results"] for w in ws] for (n, e), ws in raw.items()}
    run.finish(args.out, rows=rows, targets=targets, raw=raw_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
