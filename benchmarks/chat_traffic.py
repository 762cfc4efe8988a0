"""Chat traffic: does every wording of an edited fact answer, and does no sibling switch on?

    PYTHONPATH=. python benchmarks/chat_traffic.py --limit 100                 # ZsRE dev, subjects given
    PYTHONPATH=. python benchmarks/chat_traffic.py --limit 100 --subjects inferred
    PYTHONPATH=. python benchmarks/chat_traffic.py --limit 100 --distinct       # one edit per subject
    PYTHONPATH=. python benchmarks/chat_traffic.py --url http://127.0.0.1:8000 --limit 50

Starts `memoir serve` on a fresh state directory (or uses --url), applies the first N cases of
the data file one by one through POST /edit (the data set's subject given, or left for the
server to infer), then asks greedily through the OpenAI-compatible API, as a client would:

- the edit question and its paraphrase, each in five forms:
  - bare: one user message;
  - system: a system prompt first;
  - earlier turn: an unrelated exchange first;
  - context: a sentence before the question in the same message;
  - statement: the question turned into the statement it asks to complete
    ("What is the capital of X?" -> "The capital of X is"), through /v1/completions;
- neighbours: the edit question with its subject replaced by an entity no edit is about (the
  data files' other subjects), bare and as a statement: the memory must stay off;
- same subject: other questions about the edited subject ("Where is X located?", the dry run's
  templates, memoir_core.neighbours.RELATIONS), bare, asked once before any edit and once after.
  Subject routing lets the memory on for these (docs/routing.md); what matters is whether the
  answer moves: "answer" is then the share that names the edit's target (a leak), "changed" the
  share whose greedy answer differs from the one before the edits.

Per kind and form it reports the memory-on rate, the share routed to the prompt's own edit and
the answer rate (the target inside the greedy answer, case-insensitive), over all cases and over
the cases whose subject no other case shares ("sole": ZsRE edits one fact several times with
different targets, and a paraphrase of one such edit is the question of another). The prompts are made
from the data file at run time; nothing of it is stored in the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

sys.path.insert(0, str(common.REPO))
from tests.support.server_utils import Server, free_port

from memoir_core.datasets import Case, load_cases, sibling, unedited_subjects
from memoir_core.forms import statement_form
from memoir_core.neighbours import RELATIONS

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a concise assistant. Answer in a few words.",
                  "You answer questions about the world accurately.")
EARLIER_TURNS = (("What is the capital of France?", "The capital of France is Paris."),
                 ("Can you recommend a good book?", "Sure: 'To Kill a Mockingbird' by Harper Lee is a classic."),
                 ("How many legs does a spider have?", "A spider has eight legs."))
CONTEXT_SENTENCES = ("I am studying for a quiz.", "Quick question for you.",
                     "My friend and I were arguing about this.")
CHAT_FORMS = ("bare", "system", "earlier turn", "context")


def distinct(cases: list[Case], limit: int) -> list[Case]:
    """The first `limit` cases whose subjects differ from every earlier pick's."""
    seen, out = set(), []
    for c in cases:
        key = (c.subject or c.prompt).lower()
        if key not in seen:
            seen.add(key)
            out.append(c)
            if len(out) == limit:
                break
    return out


def chat_messages(form: str, question: str, i: int) -> list[dict]:
    """The question as a client would send it in one of the chat forms (the i-th variant)."""
    user = {"role": "user", "content": question}
    if form == "bare":
        return [user]
    if form == "system":
        return [{"role": "system", "content": SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]}, user]
    if form == "earlier turn":
        asked, answered = EARLIER_TURNS[i % len(EARLIER_TURNS)]
        return [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}, user]
    if form == "context":
        return [{"role": "user", "content": f"{CONTEXT_SENTENCES[i % len(CONTEXT_SENTENCES)]} {question}"}]
    raise ValueError(form)


def statement(question: str, subject: str | None) -> str | None:
    """The completions form: a question's statement, or the prompt itself where it already is one."""
    return statement_form(question, subject) if question.rstrip().endswith("?") else question


def probes(cases: list[Case], others: list[str]) -> list[dict]:
    """Every request to send: kind, form, the case it belongs to, and the prompt or messages."""
    out = []
    for i, c in enumerate(cases):
        questions = [("question", c.prompt)] + [("paraphrase", r) for r in c.rephrases[:1]]
        for kind, q in questions:
            out += [{"kind": kind, "form": f, "case": i, "messages": chat_messages(f, q, i)} for f in CHAT_FORMS]
            if s := statement(q, c.subject):
                out.append({"kind": kind, "form": "statement", "case": i, "prompt": s})
        other = others[i % len(others)] if others else None
        if other and (asked := sibling(c, other)):
            out.append({"kind": "neighbour", "form": "bare", "case": i, "messages": chat_messages("bare", asked, i)})
            if s := statement(asked, other):
                out.append({"kind": "neighbour", "form": "statement", "case": i, "prompt": s})
    return out + same_subject(cases)


def same_subject(cases: list[Case]) -> list[dict]:
    """Other questions about each edited subject (one template per case, in turn)."""
    return [{"kind": "same subject", "form": "bare", "case": i,
             "messages": chat_messages("bare", RELATIONS[i % len(RELATIONS)].format(s=c.subject), i)}
            for i, c in enumerate(cases) if c.subject]


async def ask(c: httpx.AsyncClient, probe: dict, tokens: int) -> tuple[str, dict]:
    if "messages" in probe:
        r = await c.post("/v1/chat/completions", json={"messages": probe["messages"], "max_tokens": tokens,
                                                       "temperature": 0})
        r.raise_for_status()
        body = r.json()
        return body["choices"][0]["message"]["content"] or "", body["memory"]
    r = await c.post("/v1/completions", json={"prompt": probe["prompt"], "max_tokens": tokens, "temperature": 0})
    r.raise_for_status()
    body = r.json()
    return body["choices"][0]["text"], body["memory"]


def contains(answer: str, target: str) -> bool:
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    return norm(target) in norm(answer)


async def run(url: str, cases: list[Case], others: list[str], args) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=900) as c:
        # the base model's answers to the same-subject questions, before any edit
        before = {p["case"]: (await ask(c, p, args.tokens))[0] for p in same_subject(cases)}
        edits, t0 = [], time.perf_counter()
        for i, case in enumerate(cases):
            body = {"prompt": case.prompt, "target_new": case.target, "id": f"case-{i}"}
            if args.subjects == "given" and case.subject:
                body["subject"] = case.subject
            r = await c.post("/edit", json=body)
            r.raise_for_status()
            edits.append(r.json()["edits"][0])
            print(f"\r  edits {i + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        todo = probes(cases, others)
        gate, done = asyncio.Semaphore(args.concurrency), 0

        async def one(p: dict) -> dict:
            nonlocal done
            async with gate:
                answer, memory = await ask(c, p, args.tokens)
            done += 1
            print(f"\r  requests {done}/{len(todo)}", end="", file=sys.stderr, flush=True)
            return {**p, "answer": answer, "on": memory["on"], "own": memory["edit_id"] == f"case-{p['case']}",
                    "hit": contains(answer, cases[p["case"]].target),
                    "changed": p["kind"] == "same subject" and answer != before[p["case"]]}

        answered = await asyncio.gather(*(one(p) for p in todo))
        print(file=sys.stderr)
    # ZsRE edits the same fact of a subject several times with different targets: a paraphrase of
    # one is a question of another, and no router can tell which answer it wants. Cases whose
    # subject no other case shares are scored apart ("answer, sole"): the rate a router can reach.
    per_subject = Counter(c.subject for c in cases)
    sole = {i for i, c in enumerate(cases) if c.subject is None or per_subject[c.subject] == 1}
    rows = []
    for kind in ("question", "paraphrase", "neighbour", "same subject"):
        for form in (*CHAT_FORMS, "statement"):
            got = [a for a in answered if a["kind"] == kind and a["form"] == form]
            if got:
                rows.append({"kind": kind, "form": form, "n": len(got),
                             "on": statistics.fmean(a["on"] for a in got),
                             "own": statistics.fmean(a["own"] for a in got),
                             "answer": statistics.fmean(a["hit"] for a in got),
                             "changed": statistics.fmean(a["changed"] for a in got) if kind == "same subject" else None,
                             "n sole": sum(a["case"] in sole for a in got),
                             "answer, sole": statistics.fmean([a["hit"] for a in got if a["case"] in sole] or [0])})
    seconds = [e["seconds"] for e in edits]
    return {"rows": rows, "edits": len(edits), "unlearnt": sum(not e.get("learnt", True) for e in edits),
            "edit_seconds": common.summary(seconds),
            "subjects_inferred": sum(e.get("subject_source") == "inferred" for e in edits),
            "misses": [{k: a[k] for k in ("kind", "form", "case", "answer", "on", "own")} | {
                "prompt": a.get("prompt") or a["messages"][-1]["content"], "target": cases[a["case"]].target}
                for a in answered if (a["kind"] == "neighbour") == a["on"] or
                (a["kind"] in ("question", "paraphrase") and not a["hit"]) or
                (a["kind"] == "same subject" and a["hit"])][: args.keep_misses],
            "same_subject_examples": [{"question": a["messages"][-1]["content"], "before": before[a["case"]],
                                       "after": a["answer"], "target": cases[a["case"]].target, "on": a["on"]}
                                      for a in answered if a["kind"] == "same subject" and a["changed"]][:40]}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forms = [*CHAT_FORMS, "statement"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.27
    for j, kind in enumerate(("question", "paraphrase", "neighbour")):
        by_form = {r["form"]: r for r in rows if r["kind"] == kind}
        metric = "on" if kind == "neighbour" else "answer"
        xs = [i + (j - 1) * width for i, f in enumerate(forms) if f in by_form]
        ax.bar(xs, [by_form[f][metric] for f in forms if f in by_form], width,
               label=f"{kind} ({'memory on' if metric == 'on' else 'target answered'})")
    ax.axhline(0.85, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(forms)), forms)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (its memory should hold no edits); default: start one")
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--neighbours-from", default=None,
                    help="file whose subjects replace the edited ones (default: --data itself)")
    ap.add_argument("--subjects", choices=("given", "inferred"), default="given")
    ap.add_argument("--distinct", action="store_true",
                    help="take the first N cases whose subjects differ (one current answer per fact, as a "
                         "deployment holds), skipping ZsRE's repeated edits of the same fact")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", default=os.environ.get("MEMOIR_THREADS", "2"), help="torch threads of the server")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a memory config field for the server it starts (MEMOIR_CONFIG), e.g. other_question_rows=4")
    ap.add_argument("--keep-misses", type=int, default=200, help="misses written to the JSON, for reading")
    ap.add_argument("--out")
    ap.add_argument("--plot")
    args = ap.parse_args(argv)
    cases = distinct(load_cases(args.data, None, args.offset), args.limit) if args.distinct else \
        load_cases(args.data, args.limit, args.offset)
    others = unedited_subjects([args.neighbours_from or args.data], cases)
    run_ = common.Run("chat_traffic", vars(args))
    with tempfile.TemporaryDirectory(prefix="memoir-chat-traffic-") as state:
        port = free_port()
        env = {"MEMOIR_THREADS": args.threads}
        if args.set:
            from memoir_cli.evaluation import parse_sets

            config = Path(tempfile.gettempdir()) / f"memoir-chat-traffic-config-{os.getpid()}.json"
            config.write_text(json.dumps(parse_sets(args.set)))
            env["MEMOIR_CONFIG"] = str(config)
        server = None if args.url else Server(
            ["-m", "memoir_cli.main", "serve", "--port", str(port), "--state-dir", state, "--threads", args.threads,
             "--log-level", "warning"], env, port).start(900)
        try:
            report = asyncio.run(run(args.url or server.url, cases, others, args))
        finally:
            if server is not None:
                server.stop()
    print(f"{report['edits']} edits ({args.subjects} subjects; {report['subjects_inferred']} inferred), "
          f"{report['unlearnt']} unlearnt, edit seconds median {report['edit_seconds'].get('median', 0):.2f}")
    print(common.table(report["rows"], ["kind", "form", "n", "on", "own", "answer", "changed", "n sole",
                                        "answer, sole"]))
    if args.plot:
        plot(report["rows"], args.plot)
    run_.finish(args.out, **report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
