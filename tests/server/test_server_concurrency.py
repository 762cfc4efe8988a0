"""Generation goes on while edits train and land; each answer keeps one memory version.

A stream of greedy requests runs the whole time. After each edit's response the test takes a
reference answer for every prompt at the new version (nothing else is queued, so the server
stays at it). Every answer of the stream must name a version and equal the reference for that
version, also when it was admitted just before an edit landed and finished after.
"""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

pytestmark = pytest.mark.timeout(240)

EDITS = [
    ("who is the chief executive of the company", "jane roe"),
    ("what is the capital city of the country", "lisbon"),
    ("numbers one two three four five six", "carol dave"),
    ("who is the chief executive of the company", "john doe"),  # supersedes the first
]
PROMPTS = [p for p, _ in EDITS[:3]] + ["the quick brown fox jumps", "paris london berlin rome"]
TOKENS = 12


async def generate(c: httpx.AsyncClient, prompt: str) -> tuple[str, int, str]:
    r = await c.post("/generate", json={"prompt": prompt, "max_new_tokens": TOKENS})
    assert r.status_code == 200, r.text
    body = r.json()
    return prompt, body["memory"]["version"], body["text"]


async def scenario(url: str):
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        references: dict[int, dict[str, str]] = {}
        seen: list[tuple[str, int, str]] = []
        stop = asyncio.Event()

        async def reference() -> int:
            answers = await asyncio.gather(*[generate(c, p) for p in PROMPTS])
            (version,) = {v for _, v, _ in answers}
            references[version] = {p: t for p, _, t in answers}
            return version

        async def traffic(worker: int):
            for i in itertools.count(worker):
                if stop.is_set():
                    return
                seen.append(await generate(c, PROMPTS[i % len(PROMPTS)]))

        start = await reference()
        workers = [asyncio.create_task(traffic(w)) for w in range(6)]
        ids = []
        try:
            for prompt, target in EDITS:
                r = await c.post("/edit", json={"prompt": prompt, "target_new": target})
                assert r.status_code == 200, r.text
                version = r.json()["version"]
                ids.append(r.json()["edits"][0]["id"])
                # A request sent after the response sees the edit.
                _, seen_version, _ = await generate(c, prompt)
                assert seen_version == version
                assert await reference() == version
        finally:
            stop.set()
            await asyncio.gather(*workers)
            for edit_id in ids:
                await c.delete(f"/edits/{edit_id}")
        return start, references, seen


def test_every_answer_matches_a_rerun_at_its_version(tiny_server):
    start, references, seen = asyncio.run(scenario(tiny_server.url))
    assert sorted(references) == list(range(start, start + len(EDITS) + 1))
    versions = {v for _, v, _ in seen}
    assert len(versions) >= 3, f"the traffic saw too few versions: {versions}"
    mismatches = [(p, v, t, references[v][p]) for p, v, t in seen if t != references[v][p]]
    assert not mismatches, mismatches[:3]
    # The edits did change the answers they were about.
    first = PROMPTS[0]
    assert references[start + 1][first] != references[start][first]
    assert references[start + 4][first] != references[start + 1][first]
