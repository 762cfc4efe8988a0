"""Relation masks: the words around the subject tell an edit's paraphrase from another question
about its subject better than the whole prompt does (issue 19). Routing uses them since
2026-12-07 (memoir_core/relation.py, config.relation_lead); this script is the offline study
that rule was chosen from, on served-model masks.

    PYTHONPATH=. python benchmarks/relation_masks.py            # 150 ZsRE edits, about 5 min on 2 cores

Today an edit stays off for a prompt that names its subject but matches one of its other
questions' masks more than config.other_question_lead above its own masks (Routing.asks_else;
other_questions.py measures that rule). Those masks pool the whole prompt, and the subject's own
tokens, shared by every question about it, weigh heavily in them. A prompt's *relation mask* pools
the same activations (the edited block's, as routing reads them) over the prompt's tokens outside
the subject's name only: "Who is the CEO of" and "?" in "Who is the CEO of Acme?".

For the first --limit ZsRE dev cases with distinct subjects it reads, plain and as a chat message:
the edit prompt (its own mask, and its chat form as a key, as an edit stores them), the six
other questions of forms.OTHER_QUESTIONS (the edit's avoid masks), and what is asked afterwards:
the case's paraphrase (must stay on) and the dry run's four other questions (neighbours.RELATIONS,
not among the six: should go off). Each asked prompt gets, on whole and on relation masks, its
own score (as Routing.overlap_with: the own mask, or a key less key_margin) and its best avoid
overlap; d = avoid - own. For each rule and threshold it reports the share still routed:
  - whole:    off when d_whole > L (today's rule, L = other_question_lead)
  - relation: off when d_relation > L
  - sum:      off when d_whole + d_relation > L
No edit is trained: routing is static. Masks come from the served model here.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from other_questions import distinct_cases

from memoir_core.forms import OTHER_QUESTIONS, other_questions
from memoir_core.neighbours import RELATIONS
from memoir_core.relation import name_free
from memoir_core.tophash import span_mean

THRESHOLDS = {"whole": (0.15, 0.12, 0.10, 0.08, 0.05), "relation": (0.10, 0.08, 0.06, 0.05, 0.04),
              "sum": (0.25, 0.20, 0.17, 0.15, 0.12)}


def name_spans(subject: str):
    """The subject's place in a text, found as written (case aside): relation.name_free's spans."""
    def spans(text: str) -> list[tuple[int, int]]:
        at = text.casefold().find(subject.casefold())
        return [] if at < 0 else [(at, at + len(subject))]
    return spans


@torch.inference_mode()
def masks(memoir, encoded, subject: str) -> tuple[list[set[int]], list[set[int]]]:
    """(whole, relation) masks of each Encoded."""
    acts = memoir.prompt_acts(encoded, memoir.pool_centre)
    whole = acts.span
    relation = torch.zeros_like(whole)
    for i, e in enumerate(encoded):
        keep = name_free(memoir.encoder, e.ids[e.span[0] : e.span[1]], name_spans(subject))
        relation[i, [e.span[0] + j for j, kept in enumerate(keep) if kept]] = True
    out = []
    for span in (whole, relation):
        features = span_mean(acts.acts, span, memoir.pool_centre).cpu()
        out.append([set(m.tolist()) for m in memoir.tophash.masks(features)])
    return out[0], out[1]


def deltas(memoir, case) -> list[tuple[str, float, float]]:
    """(kind, d_whole, d_relation) of each asked prompt: its paraphrase and held-out other
    questions, plain and chat."""
    enc, k, margin = memoir.encoder, memoir.config.k, memoir.config.key_margin
    forms = [enc.plain] + ([lambda t: enc.chat([{"role": "user", "content": t}])] if enc.has_chat else [])
    own = [f(case.prompt) for f in forms]
    avoid = [f(q) for q in other_questions(case.prompt, case.subject, len(OTHER_QUESTIONS)) for f in forms]
    para = [f(case.rephrases[0]) for f in forms]
    held = [f(r.format(s=case.subject)) for r in RELATIONS for f in forms]
    asked = para + held
    kinds = ["paraphrase"] * len(para) + ["other question"] * len(held)
    whole, relation = masks(memoir, own + avoid + asked, case.subject)
    out = []
    for i, kind in enumerate(kinds):
        row = [kind]
        for m in (whole, relation):
            q = m[len(own) + len(avoid) + i]
            score = max([len(q & m[0]) / k] + [len(q & key) / k - margin for key in m[1: len(own)]])
            lead = max((len(q & a) / k for a in m[len(own): len(own) + len(avoid)]), default=0.0)
            row.append(lead - score)
        out.append(tuple(row))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help='"tiny": the tests\' random model (a smoke run)')
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common.set_torch_threads()
    run = common.Run("relation_masks", vars(args))
    memoir = common.load_memoir(args.model)
    cases = distinct_cases(args.data, args.limit)
    asked = []
    for i, case in enumerate(cases):
        asked += deltas(memoir, case)
        print(f"\r  {i + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    kinds = np.array([a[0] for a in asked])
    d = np.array([a[1:] for a in asked], dtype=float)
    rules = {"whole": d[:, 0], "relation": d[:, 1], "sum": d[:, 0] + d[:, 1]}
    rows = []
    for rule, values in rules.items():
        for threshold in THRESHOLDS[rule]:
            on = values <= threshold
            rows.append({"rule": rule, "threshold": threshold,
                         "paraphrases_routed": float(on[kinds == "paraphrase"].mean()),
                         "other_questions_routed": float(on[kinds == "other question"].mean())})
    print(common.table(rows))
    run.finish(args.out, rows=rows, cases=len(cases), paraphrase_prompts=int((kinds == "paraphrase").sum()),
               other_question_prompts=int((kinds == "other question").sum()),
               deltas=[{"kind": a[0], "whole": round(a[1], 4), "relation": round(a[2], 4)} for a in asked])
    return 0


if __name__ == "__main__":
    sys.exit(main())
