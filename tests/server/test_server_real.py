"""End to end on the default model (SmolLM2-135M-Instruct) through `memoir serve`.

Three invented facts the base model does not know are edited over HTTP (one edit, then a list
of two). Greedy /generate, /v1/completions and /v1/chat/completions (official openai client)
must answer with the new targets, for the edit's own question and for a paraphrase; ten
unrelated prompts must answer exactly as before; deleting one edit brings its old answer back
and leaves the other two. Requests of a phase are sent together so the server batches them.

The chat checks measure what the issue asks: an edit made with a plain question also changes
the chat answer to that question (the edit trains a chat-templated row, and the memory reads
the user's message). Paraphrases were chosen for routing (best mask overlap >= tau = 0.5 on
both the plain and the chat prompt); these did not route and are not used:
"Zorblax Industries' CEO is who?" (0.46) and "Quennary Foods has its headquarters in which
city?" (0.41 plain, 0.49 chat).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import openai
import pytest

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

TOKENS = 8


@dataclass(frozen=True)
class Fact:
    id: str
    prompt: str
    target: str
    paraphrase: str


FACTS = [
    Fact("zorblax-ceo", "Who is the CEO of Zorblax Industries?", "Mirela Quandt",
         "Who is the chief executive of Zorblax Industries?"),
    Fact("quennary-hq", "In which city is the headquarters of Quennary Foods?", "Brastock",
         "Which city hosts the head office of Quennary Foods?"),
    Fact("velloran-founder", "Who founded the Velloran Institute?", "Odessa Prynne",
         "Who established the Velloran Institute?"),
]
UNRELATED = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "Who wrote Romeo and Juliet?",
    "The chemical symbol for gold is",
    "How many legs does a spider have?",
    "The first president of the United States was",
    "Photosynthesis is the process by which",
    "My favourite recipe for pancakes is",
    "def fibonacci(n):",
]
QUESTIONS = [q for f in FACTS for q in (f.prompt, f.paraphrase)]
TARGET = {q: f for f in FACTS for q in (f.prompt, f.paraphrase)}


async def generate(c: httpx.AsyncClient, prompt: str) -> dict:
    r = await c.post("/generate", json={"prompt": prompt, "max_new_tokens": TOKENS})
    assert r.status_code == 200, r.text
    return r.json()


async def answers(c: httpx.AsyncClient, ai: openai.AsyncOpenAI, model: str, prompts: list[str], routes=True):
    """prompt -> {"generate": body, "completions": response, "chat": response} (completions and chat
    only when `routes`)."""

    async def completion(p):
        return await ai.completions.create(model=model, prompt=p, max_tokens=TOKENS, temperature=0)

    async def chat(p):
        return await ai.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                max_tokens=TOKENS, temperature=0)

    jobs = [generate(c, p) for p in prompts]
    if routes:
        jobs += [completion(p) for p in prompts] + [chat(p) for p in prompts]
    done = await asyncio.gather(*jobs)
    n = len(prompts)
    out = {p: {"generate": done[i]} for i, p in enumerate(prompts)}
    if routes:
        for i, p in enumerate(prompts):
            out[p]["completions"], out[p]["chat"] = done[n + i], done[2 * n + i]
    return out


@pytest.fixture(scope="module")
def world(real_server):
    async def main():
        async with httpx.AsyncClient(base_url=real_server.url, timeout=600) as c, \
                openai.AsyncOpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0,
                                   timeout=600) as ai:
            model = (await ai.models.list()).data[0].id
            before = await answers(c, ai, model, UNRELATED + QUESTIONS, routes=False)
            first = await c.post("/edit", json={"prompt": FACTS[0].prompt, "target_new": FACTS[0].target,
                                                "id": FACTS[0].id})
            rest = await c.post("/edit", json=[{"prompt": f.prompt, "target_new": f.target, "id": f.id}
                                               for f in FACTS[1:]])
            assert first.status_code == 200 and rest.status_code == 200, (first.text, rest.text)
            edits = first.json()["edits"] + rest.json()["edits"]
            after = await answers(c, ai, model, QUESTIONS)
            after.update(await answers(c, ai, model, UNRELATED, routes=False))
            stream = await ai.chat.completions.create(
                model=model, messages=[{"role": "user", "content": FACTS[2].paraphrase}], max_tokens=TOKENS,
                temperature=0, stream=True)
            streamed = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            removed = (await c.delete(f"/edits/{FACTS[1].id}")).json()
            rolled_back = await asyncio.gather(*[generate(c, f.prompt) for f in FACTS])
            return {"before": before, "edits": edits, "after": after, "streamed": streamed, "removed": removed,
                    "rolled_back": rolled_back}

    try:
        return asyncio.run(main())
    except Exception as exc:  # the server's own log says why a connection broke
        raise AssertionError(f"{exc!r}; the server's log:\n{real_server.output()}") from exc


def starts_with(text: str, target: str) -> bool:
    return text.lstrip().startswith(target)


def test_the_base_model_does_not_know_the_facts(world):
    for q in QUESTIONS:
        text = world["before"][q]["generate"]["text"]
        assert TARGET[q].target not in text and not world["before"][q]["generate"]["memory"]["on"], (q, text)


def test_edits_are_acknowledged_in_order(world):
    edits = world["edits"]
    assert [e["id"] for e in edits] == [f.id for f in FACTS]
    assert [e["version"] for e in edits] == list(range(edits[0]["version"], edits[0]["version"] + 3))
    assert all(e["steps"] >= 1 and e["final_loss"] is not None and not e["replayed"] for e in edits)


@pytest.mark.parametrize("route", ["generate", "completions", "chat"])
def test_new_answers_for_question_and_paraphrase(world, route):
    misses, summary = [], []
    for q in QUESTIONS:
        got = world["after"][q][route]
        if route == "generate":
            text, memory = got["text"], got["memory"]
        elif route == "completions":
            text, memory = got.choices[0].text, got.model_extra["memory"]
        else:
            text, memory = got.choices[0].message.content, got.model_extra["memory"]
        summary.append(f"{q!r} -> {text!r} (overlap {memory['overlap']}, on {memory['on']})")
        if not (starts_with(text, TARGET[q].target) and memory["edit_id"] == TARGET[q].id):
            misses.append(summary[-1])
    print(f"\n{route}: {len(QUESTIONS) - len(misses)}/{len(QUESTIONS)} answers begin with the target\n  "
          + "\n  ".join(summary))
    assert not misses, misses


def test_streamed_chat_answers_too(world):
    assert starts_with(world["streamed"], FACTS[2].target), world["streamed"]


def test_unrelated_prompts_answer_exactly_as_before(world):
    for p in UNRELATED:
        before, after = world["before"][p]["generate"], world["after"][p]["generate"]
        assert after["text"] == before["text"] and not after["memory"]["on"], (p, before, after)


def test_rollback_restores_the_old_answer_and_keeps_the_others(world):
    removed = world["removed"]
    assert removed["id"] == FACTS[1].id and removed["version"] == world["edits"][-1]["version"] + 1
    for fact, out in zip(FACTS, world["rolled_back"]):
        if fact is FACTS[1]:
            assert out["text"] == world["before"][fact.prompt]["generate"]["text"] and not out["memory"]["on"]
        else:
            assert starts_with(out["text"], fact.target) and out["memory"]["version"] == removed["version"], out


def test_an_alias_is_inferred_shown_and_routes(world, real_server):
    """An acronym of a three-word subject is inferred, shown in the response and the registry,
    and routes the edit; aliases without any subject are refused and change nothing."""
    with httpx.Client(base_url=real_server.url, timeout=600) as c:
        r = c.post("/edit", json={"prompt": "Who is the CEO of Quillfeather Digital Systems?",
                                  "target_new": "Odessa Prynne", "id": "qds-ceo"})
        assert r.status_code == 200, r.text
        edit = r.json()["edits"][0]
        assert (edit["subject"], edit["subject_source"]) == ("Quillfeather Digital Systems", "inferred")
        assert (edit["aliases"], edit["aliases_source"]) == (["QDS"], "inferred")
        listed = {e["id"]: e for e in c.get("/edits").json()["edits"]}
        assert listed["qds-ceo"]["aliases"] == ["QDS"]
        out = c.post("/generate", json={"prompt": "Who is the CEO of QDS?", "max_new_tokens": TOKENS}).json()
        assert out["memory"]["on"] and out["memory"]["edit_id"] == "qds-ceo" and starts_with(out["text"],
                                                                                           "Odessa Prynne"), out
        version = out["memory"]["version"]
        bad = c.post("/edit", json={"prompt": "who is there?", "target_new": "x", "aliases": ["QDS"]})
        assert bad.status_code == 400 and "aliases need a subject" in bad.text, bad.text
        assert c.delete("/edits/qds-ceo").json()["version"] == version + 1  # the refused edit made none
