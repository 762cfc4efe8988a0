"""Other questions about an edited subject: how far ahead of the edit's own masks must one of its
other questions' masks be before the edit stays off (config.other_question_lead)?

    PYTHONPATH=. python benchmarks/other_questions.py            # 150 ZsRE edits, about 4 min on 2 cores

Routing is static: a prompt's mask does not depend on what the edits learned. So no edit is
trained here. For the first --limit ZsRE dev cases with distinct subjects, it reads the masks
the memory would store (the edit prompt plain, its chat form and statement form as routing
keys; the six other questions of forms.OTHER_QUESTIONS, plain and chat, as `avoid`) and the
masks of what is asked afterwards, plain and chat:
  - the case's paraphrase: must stay on;
  - the dry run's four other questions about the subject (neighbours.RELATIONS, not among the
    six): should go off.
For each lead it reports the share of each still routed (the subject is named in all of them,
so subject routing alone lets every one through). Masks come from the served model here and
from the training copy at edit time (a few columns differ); chat_traffic.py measures the rule
as served.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from memoir_core.datasets import load_cases
from memoir_core.forms import OTHER_QUESTIONS, other_questions, statement_form
from memoir_core.neighbours import RELATIONS

LEADS = (None, 0.15, 0.13, 0.12, 0.10, 0.08, 0.05, 0.0)


def distinct_cases(path, limit: int):
    seen, out = set(), []
    for c in load_cases(path):
        if c.subject and c.subject not in seen and c.rephrases:
            seen.add(c.subject)
            out.append(c)
    return out[:limit]


def scores(memoir, case, n_questions: int = len(OTHER_QUESTIONS)) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(own score, best other-question overlap) of the paraphrase and of each held-out question,
    plain and chat."""
    enc, k = memoir.encoder, memoir.config.k
    chat = lambda text: enc.chat([{"role": "user", "content": text}])  # noqa: E731
    statement = statement_form(case.prompt, case.subject)
    own = [enc.plain(case.prompt), chat(case.prompt)] + ([enc.plain(statement)] if statement else [])
    others = other_questions(case.prompt, case.subject, n_questions)
    avoid = [enc.plain(q) for q in others] + [chat(q) for q in others]
    para = case.rephrases[0]
    held = [r.format(s=case.subject) for r in RELATIONS]
    asked = [enc.plain(para), chat(para)] + [enc.plain(q) for q in held] + [chat(q) for q in held]
    masks = [set(m.tolist()) for m in memoir.masks(own + avoid + asked)]
    own_m, avoid_m, asked_m = masks[: len(own)], masks[len(own): len(own) + len(avoid)], masks[len(own) + len(avoid):]

    def score(q):  # as Routing.overlap_with: the edit's mask, or a key less key_margin
        first = len(q & own_m[0]) / k
        return max([first] + [len(q & m) / k - memoir.config.key_margin for m in own_m[1:]])

    def lead_of(q):
        return max((len(q & m) / k for m in avoid_m), default=0.0)

    pairs = [(score(q), lead_of(q)) for q in asked_m]
    return pairs[:2], pairs[2:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help='"tiny": the tests\' random model (a smoke run)')
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--questions", type=int, default=len(OTHER_QUESTIONS),
                    help="how many of the other questions an edit keeps masks of")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common.set_torch_threads()
    run = common.Run("other_questions", vars(args))
    memoir = common.load_memoir(args.model)
    cases = distinct_cases(args.data, args.limit)
    paraphrases, others = [], []
    for i, case in enumerate(cases):
        p, o = scores(memoir, case, args.questions)
        paraphrases += p
        others += o
        print(f"\r  {i + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    para, other = np.array(paraphrases), np.array(others)
    rows = []
    for lead in LEADS:
        on = (lambda x: np.ones(len(x), bool)) if lead is None else (lambda x, lead=lead: x[:, 1] <= x[:, 0] + lead)
        rows.append({"lead": "none" if lead is None else lead, "paraphrases_routed": float(on(para).mean()),
                     "other_questions_routed": float(on(other).mean())})
    print(common.table(rows))
    run.finish(args.out, rows=rows, cases=len(cases), paraphrase_prompts=len(para), other_question_prompts=len(other))
    return 0


if __name__ == "__main__":
    sys.exit(main())
