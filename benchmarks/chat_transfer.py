"""Does an edit made with a plain question change the chat answer? Measured over HTTP.

Applies the first N ZsRE edits (plain `src` -> `alt`) one after another through POST /edit,
then asks every question again, greedy, through /generate (plain) and /v1/chat/completions
(the model's chat template), for the edit's own question and its rephrase. Prints the share of
answers that begin with the target, the share that contain it in the first tokens, and how
often the memory routed to the right edit.

    python benchmarks/chat_transfer.py --limit 20            # starts `memoir serve` itself
    python benchmarks/chat_transfer.py --url http://127.0.0.1:8000 --limit 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data/zsre/zsre_edit_dev_500.json"  # as `memoir eval` takes it, from the repository root


def start_server(threads: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "memoir_cli.main", "serve", "--port", str(port), "--threads",
                             threads, "--log-level", "warning"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the server was not ready in time")


async def ask(c: httpx.AsyncClient, question: str, tokens: int) -> dict:
    plain, chat = await asyncio.gather(
        c.post("/generate", json={"prompt": question, "max_new_tokens": tokens}),
        c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}],
                                             "max_tokens": tokens, "temperature": 0}))
    p, ch = plain.json(), chat.json()
    return {"plain": (p["text"], p["memory"]), "chat": (ch["choices"][0]["message"]["content"], ch["memory"])}


async def run(url: str, records: list[dict], tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        seconds = []
        for i, r in enumerate(records):
            out = await c.post("/edit", json={"prompt": r["src"], "target_new": r["alt"], "id": f"zsre-{i}"})
            out.raise_for_status()
            seconds.append(out.json()["edits"][0]["seconds"])
        tally: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            for kind, question in (("question", r["src"]), ("rephrase", r["rephrase"])):
                got = await ask(c, question, tokens)
                for route, (text, memory) in got.items():
                    key = f"{route}/{kind}"
                    hit = text.strip().lower().startswith(r["alt"].strip().lower())
                    inside = r["alt"].strip().lower() in text.lower()
                    routed = memory["edit_id"] == f"zsre-{i}"
                    for name, ok in (("begins", hit), ("contains", inside), ("routed", routed)):
                        tally.setdefault(f"{key} {name}", []).append(int(ok))
        for i in range(len(records)):
            await c.delete(f"/edits/zsre-{i}")
    report = {k: round(sum(v) / len(v), 3) for k, v in sorted(tally.items())}
    report.update(edits=len(records), edit_seconds_median=round(statistics.median(seconds), 2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start `memoir serve`")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--threads", default="1", help="torch threads of the server started here")
    args = parser.parse_args()
    records = json.loads(Path(args.data).read_text())[: args.limit]
    proc, url = (None, args.url) if args.url else start_server(args.threads)
    try:
        print(json.dumps(asyncio.run(run(url, records, args.tokens)), indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
