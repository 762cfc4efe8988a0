"""Routing without training: where plain, paraphrased, chat-form and unrelated prompts go after N edits.

    PYTHONPATH=. python benchmarks/routing_study.py --limit 1000               # ZsRE dev 500 + train 500
    PYTHONPATH=. python benchmarks/routing_study.py --limit 1000 --set pool=mean

Routing is static: what enters the memory at block L does not depend on W_m, so a stream whose
edits train one step each stores the same masks and chat keys, and routes every prompt the same
way, as the real stream (only what the edits answer differs). That makes a routing question
about 1,000 edits cost one preparation per edit (about 17 min on one core) instead of a full
`memoir eval` (about 100 min). For each key margin (how much less a chat key counts than an
edit's own mask; config `key_margin`) the table gives, per kind of prompt, the share that
switches the memory on, reaches its own edit, reaches an edit about its own subject, and
reaches its own edit where no other stored edit has that subject.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from memoir_cli.evaluation import parse_sets
from memoir_core.config import MemoirConfig
from memoir_core.datasets import load_cases
from memoir_core.maskbank import Match

ZSRE_TRAIN = common.SHARED / "data" / "zsre" / "zsre_train_1k.json"


def prompt_groups(memoir, cases) -> dict[str, list[tuple]]:
    """Kind of prompt -> [(encoded prompt, index of the case it belongs to)]."""
    enc = memoir.encoder
    groups = {
        "plain": [(enc.plain(c.prompt), i) for i, c in enumerate(cases)],
        "paraphrase": [(enc.plain(r), i) for i, c in enumerate(cases) for r in c.rephrases],
        "unrelated": [(enc.plain(c.loc_prompt), i) for i, c in enumerate(cases) if c.loc_prompt],
    }
    if enc.has_chat:
        chat = lambda text: enc.chat([{"role": "user", "content": text}])  # noqa: E731
        groups["chat"] = [(chat(c.prompt), i) for i, c in enumerate(cases)]
        groups["chat_paraphrase"] = [(chat(r), i) for i, c in enumerate(cases) for r in c.rephrases]
    return groups


def decide(primary: list[Match], keyed: list[Match] | None, margin: float, tau: float,
           min_gap: float = 0.0) -> list[str | None]:
    """The routed edit of each prompt (None: memory off), as Routing.best and decide combine them
    (primary: the bank's matches with their runner_up at config.gap_rank)."""
    routed = []
    for i, a in enumerate(primary):
        best = a
        if keyed is not None and keyed[i].edit_id is not None and keyed[i].overlap - margin > a.overlap:
            best = Match(keyed[i].edit_id, keyed[i].overlap - margin)
        on = best.edit_id is not None and best.overlap >= tau and best.overlap - a.runner_up >= min_gap
        routed.append(best.edit_id if on else None)
    return routed


def rates(routed: list[str | None], own: list[str], subject: dict[str, str | None], unrelated: bool) -> dict:
    share = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    row = {"on": share([r is not None for r in routed])}
    if unrelated:
        return row
    per_subject = Counter(subject.values())
    row["own"] = share([r == o for r, o in zip(routed, own)])
    row["subject"] = share([r is not None and subject[r] == subject[o] for r, o in zip(routed, own)])
    row["own_unique_subject"] = share([r == o for r, o in zip(routed, own)
                                      if subject[o] is not None and per_subject[subject[o]] == 1])
    return row


def stream_parser(description: str) -> argparse.ArgumentParser:
    """The options every routing study shares: which cases, which config, which model."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--extend", default=str(ZSRE_TRAIN), help="records that continue the stream past --data")
    ap.add_argument("--limit", type=int, default=1000, help="edits in all")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one config field")
    ap.add_argument("--model", default="default", help='"default", a Hugging Face id or folder, or "tiny"')
    ap.add_argument("--out")
    return ap


def stream_setup(args, **fixed) -> tuple[list, MemoirConfig]:
    """The cases (--data, continued by --extend up to --limit) and the config (--set, then `fixed`)."""
    common.set_torch_threads()
    cases = load_cases(args.data, args.limit)
    if len(cases) < args.limit and args.extend:
        cases += load_cases(args.extend, args.limit - len(cases))
    base = MemoirConfig(k=32, tau=0.5) if args.model == "tiny" else MemoirConfig()
    return cases, dataclasses.replace(base, **{**parse_sets(args.set), **fixed})


def main(argv=None) -> int:
    ap = stream_parser(__doc__.splitlines()[0])
    ap.add_argument("--margins", default="0,0.01,0.03,0.08,inf", help="key margins to compare (inf: no chat keys)")
    args = ap.parse_args(argv)
    cases, config = stream_setup(args, max_steps=1, settle_steps=1)
    run = common.Run("routing_study", vars(args))
    memoir = common.load_memoir(args.model, config)
    run.data["config"] = memoir.config.to_dict()
    ids, successor = [], {}
    for i, case in enumerate(cases):
        rec = memoir.edit(case.prompt, case.target, subject=case.subject, edit_id=f"case-{i}")
        if rec.supersedes:
            successor[rec.supersedes] = rec.id
        ids.append(rec.id)
        if (i + 1) % 100 == 0 or i + 1 == len(cases):
            print(f"  {i + 1}/{len(cases)} edits", file=sys.stderr, flush=True)
    for i, eid in enumerate(ids):
        while eid in successor:
            eid = successor[eid]
        ids[i] = eid
    subject = {ids[i]: c.subject for i, c in enumerate(cases)}
    tau = memoir.tau
    margins = [float(m) for m in args.margins.split(",")]
    rows = []
    for kind, items in prompt_groups(memoir, cases).items():
        masks = memoir.tophash.masks(memoir.features([e for e, _ in items])).numpy()
        primary = memoir.bank.best(masks, rank=memoir.config.gap_rank)
        keyed = memoir.keybank.best(masks) if len(memoir.keybank) else None
        own = [ids[i] for _, i in items]
        for margin in margins:
            routed = decide(primary, keyed, margin, tau, memoir.config.min_gap)
            rows.append({"prompts": kind, "n": len(items), "key_margin": margin if math.isfinite(margin) else "no keys",
                         **rates(routed, own, subject, kind == "unrelated")})
    print(f"{len(cases)} edits, tau {tau:.3f}, pool {memoir.config.pool}")
    print(common.table(rows, ["prompts", "n", "key_margin", "on", "own", "subject", "own_unique_subject"]))
    run.finish(args.out, edits=len(cases), tau=tau, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
