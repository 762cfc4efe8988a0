"""Answer-key gate: does the prompt's own input where the answer is read tell a paraphrase from
another question about the same subject? (issue 19, the same-subject leak; a study, no rule uses it)

    PYTHONPATH=. python benchmarks/answer_key_gate.py            # 60 ZsRE edits, about 2 min on 2 cores

With answer keys (docs/routing.md) a routed prompt's last token reads the edit's own memory input
there, so a prompt routed to an edit answers its target whatever it asked: "Where is X located?"
routed to an edit of "When was X founded?" says the founding year. Routing lets the memory on for
65% of such questions on the chat-traffic benchmark. A gate could refuse the key, or the route,
where the prompt's own input at that token is far from the key.

For the first --limit ZsRE dev cases with distinct subjects, memory off, nothing trained: the
columns the edit would train (the column hash of its plain prompt), its plain key (the question's
last token) and its chat key (the chat form's last token), both less the background mean on those
columns; then the cosine of each asked prompt's own input at its last token with the key of its
form: the case's paraphrase (must keep the key), its statement form, and the dry run's four other
questions about the subject (neighbours.RELATIONS: should lose it), bare and as a chat message.
It reports quantiles per kind and, per threshold, the share of paraphrases kept and of other
questions dropped.

The chat kinds are asked in each of chat_traffic.py's chat forms (bare, with a system prompt,
after an earlier turn, after a context sentence), since a gate must hold in all of them, and read
at two places: the template's last token ("chat": where the answer is read, against the chat key)
and the question's own last token ("chat at question": against the edit's chat form at the same
token). The system prompt, the earlier turn and the context sentence move both inputs: no single
threshold keeps the paraphrases of every form (docs/routing.md, "What it does not do").
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from chat_traffic import CHAT_FORMS, chat_messages
from other_questions import distinct_cases

from memoir_core.forms import statement_form
from memoir_core.neighbours import RELATIONS

THRESHOLDS = (0.6, 0.7, 0.8, 0.86, 0.9)


@torch.inference_mode()
def inputs(memoir, encoded) -> torch.Tensor:
    """The memory's inputs at every token of the prompt -> [T, D] fp32 (memory off)."""
    return memoir.prompt_acts([encoded], None).acts[0, : len(encoded.ids)].float().cpu()


def cosines(memoir, case, i: int) -> list[tuple[str, float]]:
    """(kind, cosine with the key of its form) of each prompt asked about one case (the i-th)."""
    mu = memoir.basis.background_mean.float().cpu()
    plain = memoir.encoder.plain
    idx = memoir.colhash.masks(memoir.features([plain(case.prompt)], centre=None))[0]
    last = lambda e: len(e.ids) - 1  # noqa: E731
    question = lambda e: e.span[1] - 1  # noqa: E731

    def at(encoded, where) -> torch.Tensor:
        return (inputs(memoir, encoded)[where(encoded)] - mu)[idx]

    own = memoir.encoder.chat([{"role": "user", "content": case.prompt}])
    keys = {"bare": at(plain(case.prompt), last), "chat": at(own, last), "chat at question": at(own, question)}

    def cos(x: torch.Tensor, form: str) -> float:
        return float(torch.nn.functional.cosine_similarity(x, keys[form], dim=0))

    asked = [("paraphrase", case.rephrases[0])] + [("other question", t.format(s=case.subject)) for t in RELATIONS]
    out = []
    for kind, q in asked:
        out.append((kind, cos(at(plain(q), last), "bare")))
        for form in CHAT_FORMS:
            e = memoir.encoder.chat(chat_messages(form, q, i))
            acts = (inputs(memoir, e) - mu)[:, idx]
            tag = "" if form == "bare" else f" ({form})"
            out += [(f"{kind}, chat{tag}", cos(acts[last(e)], "chat")),
                    (f"{kind}, chat at question{tag}", cos(acts[question(e)], "chat at question"))]
    statement = statement_form(case.prompt, case.subject)
    if statement:
        out.append(("statement", cos(at(plain(statement), last), "bare")))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help='"tiny": the tests\' random model (a smoke run)')
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common.set_torch_threads()
    run = common.Run("answer_key_gate", vars(args))
    memoir = common.load_memoir(args.model)
    cases = distinct_cases(args.data, args.limit)
    asked: list[tuple[str, float]] = []
    for i, case in enumerate(cases):
        asked += cosines(memoir, case, i)
        print(f"\r  {i + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    by_kind: dict[str, list[float]] = {}
    for kind, value in asked:
        by_kind.setdefault(kind, []).append(value)
    spread = []
    for kind, values in by_kind.items():
        q = torch.quantile(torch.tensor(values), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])).tolist()
        spread.append({"kind": kind, "n": len(values), **{f"q{p}": round(v, 3) for p, v in zip((5, 25, 50, 75, 95), q)}})
    rows = []
    pairs = [("paraphrase", "other question")] + [
        (f"paraphrase, {where}{tag}", f"other question, {where}{tag}") for where in ("chat", "chat at question")
        for tag in ["" if f == "bare" else f" ({f})" for f in CHAT_FORMS]]
    for keep, drop in pairs:
        for t in THRESHOLDS:
            rows.append({"paraphrases": keep, "threshold": t,
                         "paraphrases_kept": sum(v >= t for v in by_kind[keep]) / len(by_kind[keep]),
                         "other_questions_dropped": sum(v < t for v in by_kind[drop]) / len(by_kind[drop])})
    print(common.table(spread))
    print(common.table(rows))
    run.finish(args.out, spread=spread, rows=rows, cases=len(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
