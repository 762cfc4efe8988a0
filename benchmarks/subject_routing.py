"""Subject routing from masks alone: where paraphrases, neighbours and unrelated prompts go.

    PYTHONPATH=. python benchmarks/subject_routing.py                                # ZsRE dev 500 + train 500
    PYTHONPATH=. python benchmarks/subject_routing.py --limit 1000 \\
        --data DATA/counterfact/counterfact_val_1919.json --extend DATA/counterfact/counterfact_train_10k.json

Routing is static (what enters the memory does not depend on W_m), so every case's prompt is
stored as an edit with its routing mask, chat key and trained columns, as `Memoir.propose`
makes them, but without training (a shared zero delta). Then each kind of prompt is routed by
the real `Memoir.decide`, with the text of its span, under three rules: masks alone (subject
routing off), subjects as the data set gives them, and subjects inferred from the edit prompts
(what an operator gets who sends none). Per rule and kind: the share that switches the memory on,
reaches its own edit, reaches an edit about its own subject. "locality" prompts are the set's
own (ZsRE: unrelated questions; CounterFact: another subject in the same relation); "swapped"
is each edit prompt with its subject replaced by an entity no stored edit is about (the data
files' other subjects): the same question about an unedited sibling. "unnamed": the share that
reached an edit whose subject the prompt does not name (a leak). The last table gives the
overlap percentiles of paraphrases with their own edit (where their subject is named), for
choosing subject_tau.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from routing_study import stream_parser, stream_setup

from memoir_core.datasets import sibling, unedited_subjects
from memoir_core.neighbours import builtin_names
from memoir_core.records import EditRecord
from memoir_core.subjects import names, subject_words


def edit_masks(memoir, cases) -> dict:
    """What propose() stores for each case's prompt: routing mask, trained columns, chat key."""
    enc = memoir.encoder
    plain = [enc.plain(c.prompt) for c in cases]
    out = {"route": memoir.masks(plain), "columns": memoir.colhash.masks(memoir.features(plain, centre=None))}
    if enc.has_chat:
        out["chat"] = memoir.masks([enc.chat([{"role": "user", "content": c.prompt}]) for c in cases])
    return out


def store(memoir, cases, masks: dict, subjects: str) -> list[str]:
    """Every case's prompt as an untrained edit; subjects "given", "inferred" or "off"."""
    zero = torch.zeros(memoir.d_out, memoir.config.k, dtype=torch.int32)
    ids = []
    for i, c in enumerate(cases):
        subject, source = (None, None) if subjects == "off" else \
            memoir.subject_of(c.prompt, c.subject if subjects == "given" else None)
        rec = EditRecord(id=f"case-{i}", prompt=c.prompt, target_new=c.target, subject=subject, subject_source=source,
                         route=masks["route"][i].tolist(), keys=[masks["chat"][i].tolist()] if "chat" in masks else [],
                         idx=masks["columns"][i].long(), delta=zero)
        memoir.apply(rec)
        ids.append(rec.id)
    return ids


def unstored_subjects(paths: list[str], stored) -> list[str]:
    """The siblings (datasets.unedited_subjects); the built-in names where the files have none."""
    return unedited_subjects(paths, stored) or builtin_names()


def swapped(cases, others: list[str]) -> list[tuple[str, int]]:
    """Each prompt with its subject replaced by an entity no edit is about, with its case: the
    same question about an unedited sibling must leave the memory off."""
    asked = ((sibling(c, others[i % len(others)]), i) for i, c in enumerate(cases))
    return [(prompt, i) for prompt, i in asked if prompt is not None]


def prompt_features(memoir, texts: list[str], chat: bool = False) -> list[tuple]:
    """Per batch of 32: (features, tails, span texts), as Decoder.add hands them to decide()."""
    enc = memoir.encoder
    encoded = [enc.chat([{"role": "user", "content": t}]) if chat else enc.plain(t) for t in texts]
    batches = []
    for start in range(0, len(encoded), 32):
        chunk = encoded[start : start + 32]
        rows = [i for i, e in enumerate(chunk) if e.tail is not None]
        tails = (rows, memoir.features([dataclasses.replace(chunk[i], span=chunk[i].tail) for i in rows])) \
            if rows else None
        batches.append((memoir.features(chunk), tails, [enc.span_text(e.ids, e.span) for e in chunk]))
    return batches


def route(memoir, batches: list[tuple]):
    return [d for feats, tails, texts in batches for d in memoir.decide(feats, tails, texts=texts)]


def rates(decisions, own: list[int], ids: list[str], subject_of_case: list[str | None], texts: list[str]) -> dict:
    """Shares that switch the memory on; that reach their own edit, an edit about their own
    subject; and that reach an edit whose subject they do not name (a leak)."""
    routed = [d.route.edit_id if d.route is not None else None for d in decisions]
    case_of = {e: i for i, e in enumerate(ids)}
    subject = [subject_of_case[case_of[r]] if r is not None else None for r in routed]
    unnamed = [r is not None and not (s and names(subject_words(s), t)) for r, s, t in zip(routed, subject, texts)]
    return {"on": np.mean([r is not None for r in routed]), "own": np.mean([r == ids[o] for r, o in zip(routed, own)]),
            "subject": np.mean([s is not None and s == subject_of_case[o] for s, o in zip(subject, own)]),
            "unnamed": np.mean(unnamed)}


def overlap_spread(memoir, items, batches, ids: list[str], rule: str) -> list[dict]:
    """Percentiles of paraphrases' overlap with their own edit and with the other edits their
    text names (another relation of the same subject, mostly): subject_tau sits between them."""
    masks = memoir.tophash.masks(torch.cat([f for f, _, _ in batches])).numpy()
    own, other = [], []
    for (text, i), mask in zip(items, masks):
        named = memoir.subjects.named_in(text)
        if ids[i] in named:
            own.append(memoir.overlap_with(ids[i], mask))
        other += [memoir.overlap_with(e, mask) for e in named - {ids[i]}]
    qs = (1, 5, 10, 50, 90, 99)
    return [{"rule": rule, "overlap with": name, "n": len(v), **{f"p{q}": np.percentile(v, q) if v else float("nan")
                                                                 for q in qs}}
            for name, v in (("own edit", own), ("other named edits", other))]


def main(argv=None) -> int:
    ap = stream_parser(__doc__.splitlines()[0])
    ap.add_argument("--rules", default="off,given,inferred")
    args = ap.parse_args(argv)
    cases, config = stream_setup(args)
    run = common.Run("subject_routing", vars(args))
    memoir = common.load_memoir(args.model, config)
    subject_of_case = [c.subject for c in cases]
    kinds = {
        "paraphrase": [(r, i) for i, c in enumerate(cases) for r in c.rephrases],
        "locality": [(c.loc_prompt, i) for i, c in enumerate(cases) if c.loc_prompt],
        "swapped": swapped(cases, unstored_subjects([args.data, args.extend], cases)),
    }
    t0 = time.perf_counter()
    masks = edit_masks(memoir, cases)
    feats = {(kind, chat): prompt_features(memoir, [t for t, _ in items], chat)
             for kind, items in kinds.items() for chat in (False, True)}
    print(f"  features: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows, percentiles = [], []
    for rule in args.rules.split(","):
        ids = store(memoir, cases, masks, rule)
        for (kind, chat), batches in feats.items():
            items = kinds[kind]
            rows.append({"rule": rule, "prompts": ("chat " if chat else "") + kind, "n": len(items),
                         **rates(route(memoir, batches), [i for _, i in items], ids, subject_of_case,
                                  [t for t, _ in items])})
            if kind == "paraphrase" and not chat and rule != "off":
                percentiles += overlap_spread(memoir, items, batches, ids, rule)
        for e in ids:
            memoir.remove(e)
    print(f"{len(cases)} edits, tau {memoir.tau:.3f}, subject_tau {memoir.config.subject_tau}")
    print(common.table(rows, ["rule", "prompts", "n", "on", "own", "subject", "unnamed"]))
    print("paraphrases' overlap with their own edit:")
    print(common.table(percentiles))
    run.finish(args.out, edits=len(cases), rows=rows, percentiles=percentiles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
