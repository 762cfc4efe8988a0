"""The other-question rules as built: real edits, then each rule's routing of the edits'
paraphrases and of other questions about their subjects (issue 19).

    PYTHONPATH=. python benchmarks/routing_rules.py                 # 150 ZsRE edits, distinct subjects, about 12 min
    PYTHONPATH=. python benchmarks/routing_rules.py --stream        # the 1,000 of `memoir eval`'s ZsRE T = 1000, paraphrases only

relation_masks.py and other_questions.py read masks offline, from the served model. Here the
edits are made (`Memoir.edit`: the masks come from the training copy, as served) and every
prompt goes through `Memoir.route_prompts`, the routing generation uses. Rules are swapped at
routing time (the edits keep whole and relation masks either way):
  - none:        other_question_lead null
  - whole L:     relation_lead null, other_question_lead L
  - sum L:       relation_lead L (the default, 0.20)
Asked, plain and as a chat message: each edit's first paraphrase (must route to its edit) and,
without --stream, the dry run's four other questions about its subject (neighbours.RELATIONS,
not among the six the edit read its masks from: should stay off). With --stream, paraphrases
only: many of those subjects carry several edits, and the counts that matter are the
paraphrases a rule turns off.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from other_questions import distinct_cases

from memoir_core.datasets import load_cases
from memoir_core.neighbours import RELATIONS

RULES = [("none", {"other_question_lead": None}),
         ("whole 0.12", {"relation_lead": None, "other_question_lead": 0.12}),
         ("whole 0.15", {"relation_lead": None, "other_question_lead": 0.15})] + \
        [(f"sum {x:.2f}", {"relation_lead": x}) for x in (0.15, 0.17, 0.20, 0.23, 0.25, 0.30)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help='"tiny": the tests\' random model (a smoke run)')
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--limit", type=int, default=150, help="edits (distinct subjects; without --stream)")
    ap.add_argument("--stream", action="store_true", help="ZsRE dev 500 + 500 of zsre_train_1k, in order")
    ap.add_argument("--extend", default=str(common.ZSRE_DEV.parent / "zsre_train_1k.json"))
    ap.add_argument("--extend-limit", type=int, default=500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common.set_torch_threads()
    run = common.Run("routing_rules", vars(args))
    memoir = common.load_memoir(args.model)
    if args.stream:
        cases = load_cases(args.data, args.limit if args.model == "tiny" else None)
        cases += load_cases(args.extend, args.extend_limit)
    else:
        cases = distinct_cases(args.data, args.limit)
    enc = memoir.encoder
    forms = [enc.plain] + ([lambda t: enc.chat([{"role": "user", "content": t}])] if enc.has_chat else [])
    paraphrases, others = [], []
    for i, case in enumerate(cases):
        record = memoir.edit(case.prompt, case.target, subject=case.subject)
        for form in forms[: 1 if args.stream else None]:
            paraphrases.append((form(case.rephrases[0]), record.id))
            if not args.stream:
                others += [(form(r.format(s=case.subject)), record.id) for r in RELATIONS]
        print(f"\r  edits {i + 1}/{len(cases)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    base, rows = memoir.config, []
    for name, fields in RULES:
        memoir.config = dataclasses.replace(base, **fields)
        routed = memoir.route_prompts([p for p, _ in paraphrases])
        row = {"rule": name,
               "paraphrases_to_their_edit": sum(d.route is not None and d.route.edit_id == e
                                                for d, (_, e) in zip(routed, paraphrases)) / len(paraphrases),
               "paraphrases_off": sum(d.route is None for d in routed)}
        if others:
            row["other_questions_routed"] = sum(d.route is not None for d in memoir.route_prompts([p for p, _ in others])) / len(others)
        rows.append(row)
        print(f"  {name}", file=sys.stderr, flush=True)
    memoir.config = base
    print(common.table(rows))
    run.finish(args.out, rows=rows, edits=len(cases), paraphrase_prompts=len(paraphrases), other_question_prompts=len(others))
    return 0


if __name__ == "__main__":
    sys.exit(main())
