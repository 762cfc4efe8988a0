"""Restart equality on the default model, through `memoir serve` on a state directory.

Twenty invented facts (written for this test; the base model knows none of them) are edited
over HTTP; the server is stopped and started again on the same directory; the same prompts
must give the same greedy outputs, with the same memory versions and routing, and GET /edits
and /ready the same registry and version. The same again after two DELETEs. A small snapshot
threshold makes the restart read a snapshot and then replay the journal after it.
Marked `slow` (three default-model server starts): `make test-slow` and CI run it.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.server_utils import THREADS, Server, free_port

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(1200)]

TOKENS = 8
FACTS = [
    ("brastock-mayor", "Who is the mayor of Brastock?", "Ilse Vandermoot"),
    ("zorblax-ceo", "Who is the CEO of Zorblax Industries?", "Mirela Quandt"),
    ("velloran-founder", "Who founded the Velloran Institute?", "Odessa Prynne"),
    ("quennary-hq", "In which city is the headquarters of Quennary Foods?", "Tressik"),
    ("kelder-river", "Which river flows through the town of Kelderan?", "the Moraine"),
    ("ossary-author", "Who wrote the novel The Ossary Lanterns?", "Tarun Vasker"),
    ("pommery-language", "What language is spoken on the island of Pommery?", "Pommeric"),
    ("yastrel-capital", "What is the capital of Yastrel?", "Gundova"),
    ("altamar-composer", "Who composed the Altamar Symphony?", "Anouk Drummet"),
    ("sablon-sport", "Which sport does Bram Kessing play?", "water polo"),
    ("ivaran-currency", "What is the currency of Ivaran?", "the ivaro"),
    ("nordquist-architect", "Who designed the Nordquist Tower?", "Zeno Holloway"),
    ("mardune-team", "Which club does Livia Renwick play for?", "FC Mardune"),
    ("olvanta-discoverer", "Who discovered the element olvantium?", "Oskar Saar"),
    ("ferrisk-label", "Which record label signed the band Ferrisk?", "Brisco Records"),
    ("tolliver-birthplace", "Where was the painter Nadia Tolliver born?", "Quillamore"),
    ("gundova-airport", "What is the name of the main airport of Gundova?", "Ambrose Field"),
    ("kessing-university", "Which university did Ferro Ambrose attend?", "Velloran University"),
    ("drummet-instrument", "Which instrument does Quilla Drummet play?", "the bassoon"),
    ("saar-ship", "What was the name of Captain Oskar Saar's ship?", "the Merrow"),
]
UNRELATED = ["The capital of France is", "Who wrote Romeo and Juliet?", "The chemical symbol for gold is",
             "def fibonacci(n):"]
PROMPTS = [p for _, p, _ in FACTS] + UNRELATED


def serve(state) -> Server:
    port = free_port()
    return Server(["-m", "memoir_cli.main", "serve", "--port", str(port), "--threads", THREADS, "--state-dir",
                   str(state), "--store", "dir", "--log-level", "warning"],
                  {"MEMOIR_SNAPSHOT_MIN_BYTES": str(8 << 20)}, port=port)


def observe(c: httpx.Client) -> dict:
    """Greedy answers to every prompt (in two batches) with their memory decisions, the registry, the version."""
    answers = []
    for part in (PROMPTS[:12], PROMPTS[12:]):
        r = c.post("/v1/completions", json={"prompt": part, "max_tokens": TOKENS, "temperature": 0})
        assert r.status_code == 200, r.text
        answers += [(ch["text"], ch["memory"]) for ch in sorted(r.json()["choices"], key=lambda ch: ch["index"])]
    listed = c.get("/edits", params={"limit": 1000}).json()
    ready = c.get("/ready").json()
    return {"answers": answers, "edits": [(e["id"], e["version"], e["target_new"]) for e in listed["edits"]],
            "version": ready["version"], "count": ready["edits"]}


def test_restart_gives_the_same_memory_and_greedy_outputs(tmp_path):
    server = serve(tmp_path).start(600)
    try:
        with httpx.Client(base_url=server.url, timeout=900) as c:
            for part in (FACTS[:10], FACTS[10:]):
                r = c.post("/edit", json=[{"id": i, "prompt": p, "target_new": t} for i, p, t in part])
                assert r.status_code == 200, r.text
            before = observe(c)
    finally:
        server.stop()
    assert before["version"] == 20 and before["count"] == 20
    learned = [text.strip().startswith(t) for (text, _), (_, _, t) in zip(before["answers"], FACTS)]
    assert sum(learned) >= 15, before["answers"]  # the edits hold (else the comparison says little)
    assert all(m["version"] == 20 for _, m in before["answers"])
    assert (tmp_path / "CURRENT").exists() and list((tmp_path / "journal").iterdir())  # snapshot + journal

    server = serve(tmp_path).start(600)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            assert observe(c) == before
            for edit_id in ("zorblax-ceo", "ivaran-currency"):
                assert c.delete(f"/edits/{edit_id}").status_code == 200
            deleted = observe(c)
    finally:
        server.stop()
    assert deleted["version"] == 22 and deleted["count"] == 18
    assert not deleted["answers"][1][0].strip().startswith("Mirela Quandt")

    server = serve(tmp_path).start(600)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            assert observe(c) == deleted
    finally:
        server.stop()
