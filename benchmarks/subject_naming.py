"""Subject naming from words alone (no model): do paraphrases name their edit's subject, and do
unedited siblings name some stored edit's subject?

    PYTHONPATH=. python benchmarks/subject_naming.py                # ZsRE dev 500 + train 500, CounterFact val 1000

Subject routing (memoir_core/subjects.py) lets an edit switch the memory on only for prompts
that name its subject. This measures that gate by itself, in seconds, for the subjects the data
sets give and for the subjects `infer_subject` finds:
- "paraphrase named": the share of paraphrases that name their own edit's subject (a paraphrase
  that does not cannot route to its edit);
- "sibling names an edit": each edit prompt with its subject replaced by one no edit is about
  (the data files' other subjects) names the subject of some stored edit (what could leak;
  the mask overlap must then still agree).
Rules: "loose" is the first rule (any word run, a typo in any word of 6+ letters); "whole" is
today's (`names`: a whole name, typos only in subjects of several words).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from memoir_core.datasets import load_cases, sibling, unedited_subjects
from memoir_core.records import EditRecord
from memoir_core.subjects import SubjectIndex, infer_subject, same_word, subject_words, words

DATA = common.SHARED / "data"


def loose(subject_words_: list[str], text: str) -> bool:
    """The first rule, kept to compare with: the words side by side, a typo in any long word."""
    found, n = words(text), len(subject_words_)
    return any(all(same_word(s, t, typo=True) for s, t in zip(subject_words_, found[i : i + n], strict=True))
               for i in range(len(found) - n + 1))


def measure(cases, paths: list[str]) -> list[dict]:
    others = unedited_subjects(paths, cases)
    siblings = [q for i, c in enumerate(cases) if (q := sibling(c, others[i % len(others)])) is not None]
    rows = []
    for source in ("given", "inferred"):
        subjects = [c.subject if source == "given" else infer_subject(c.prompt) for c in cases]
        records = {f"e{i}": EditRecord(id=f"e{i}", prompt=c.prompt, target_new=c.target, subject=s,
                                       subject_source=source)
                   for i, (c, s) in enumerate(zip(cases, subjects, strict=True))}
        index = SubjectIndex.of(records)
        sws = [subject_words(s) if s else [] for s in subjects]
        paraphrased = [(sw, c.rephrases[0]) for sw, c in zip(sws, cases, strict=True) if c.rephrases]
        for rule in ("loose", "whole"):
            if rule == "whole":
                para = sum(f"e{i}" in index.named_in(c.rephrases[0]) for i, c in enumerate(cases) if c.rephrases)
                leak = sum(bool(index.named_in(q)) for q in siblings)
            else:
                para = sum(bool(sw) and loose(sw, r) for sw, r in paraphrased)
                leak = sum(any(sw and loose(sw, q) for sw in sws) for q in siblings)
            rows.append({"subjects": source, "rule": rule, "paraphrase named": para / len(paraphrased),
                         "sibling names an edit": leak / len(siblings), "n": len(cases)})
    return rows


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    run = common.Run("subject_naming", vars(args))
    zsre = [str(DATA / "zsre" / "zsre_edit_dev_500.json"), str(DATA / "zsre" / "zsre_train_1k.json")]
    cf = [str(DATA / "counterfact" / "counterfact_val_1919.json"),
          str(DATA / "counterfact" / "counterfact_train_10k.json")]
    sets = {"ZsRE 1000": (load_cases(zsre[0]) + load_cases(zsre[1], 500), zsre),
            "CounterFact 1000": (load_cases(cf[0], 1000), cf)}
    rows = [{"data": name, **r} for name, (cases, paths) in sets.items() for r in measure(cases, paths)]
    print(common.table(rows, ["data", "subjects", "rule", "n", "paraphrase named", "sibling names an edit"]))
    run.finish(args.out, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
