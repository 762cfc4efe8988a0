"""The gap rule from masks alone: how far the best match must beat the rank-th best stored mask.

    PYTHONPATH=. python benchmarks/routing_gap.py                                   # ZsRE dev 500 + train 500
    PYTHONPATH=. python benchmarks/routing_gap.py --limit 2000 \\
        --data ../shared/data/counterfact/counterfact_val_1919.json \\
        --extend ../shared/data/counterfact/counterfact_train_10k.json

Every case's prompt becomes a stored edit's routing mask and its chat form a routing key, as
`Memoir.propose` makes them (no training: routing reads only the activations entering the
memory, which W_m does not change). Then each paraphrase and locality prompt is routed as
`Routing.decide` does, for every (gap_rank, min_gap) pair: on when its best score reaches tau
at the bank's size and beats the bank's gap_rank-th best mask by min_gap. Per rule: the share of
paraphrases routed to their own edit and to an edit about their subject (also over subjects
with 3 or more edits, which a gap rule can hurt), and the share of locality prompts that
switch the memory on. A few minutes on one core for 2,000 cases.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from routing_study import stream_parser, stream_setup


def dense(masks: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(masks), width), dtype=np.float32)
    np.put_along_axis(out, np.asarray(masks, dtype=np.int64), 1.0, axis=1)
    return out


def dense_masks(memoir, texts: list, chat: bool = False) -> np.ndarray:
    enc = memoir.encoder
    encoded = [enc.chat([{"role": "user", "content": t}]) if chat else enc.plain(t) for t in texts]
    return dense(memoir.tophash.masks(memoir.features(encoded)).numpy(), memoir.width)


def rules(ranks: list[int], gaps: list[float]) -> list[tuple[int, float]]:
    return [(0, 0.0)] + [(r, g) for r in ranks for g in gaps]


def main(argv=None) -> int:
    ap = stream_parser(__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="6,8,10")
    ap.add_argument("--gaps", default="0.04,0.06,0.08")
    args = ap.parse_args(argv)
    cases, config = stream_setup(args)
    memoir = common.load_memoir(args.model, config)
    run = common.Run("routing_gap", vars(args))
    cfg = memoir.config
    run.data["config"] = cfg.to_dict()
    print(f"  masks of {len(cases)} prompts, chat forms, paraphrases, locality prompts", file=sys.stderr, flush=True)
    bank = dense_masks(memoir, [c.prompt for c in cases])
    keys = dense_masks(memoir, [c.prompt for c in cases], chat=True) if memoir.encoder.has_chat else None
    para_case = np.array([i for i, c in enumerate(cases) for _ in c.rephrases], dtype=np.int64)
    loc_case = np.array([i for i, c in enumerate(cases) if c.loc_prompt], dtype=np.int64)
    queries = {"paraphrase": (dense_masks(memoir, [r for c in cases for r in c.rephrases]), para_case),
               "unrelated": (dense_masks(memoir, [c.loc_prompt for c in cases if c.loc_prompt]), loc_case)}
    subject = np.array([str(c.subject) for c in cases])
    per_subject = Counter(subject)
    tau = cfg.tau_at(len(cases))
    k = cfg.k
    ranks = [int(r) for r in args.ranks.split(",")]
    gaps = [float(g) for g in args.gaps.split(",")]
    rows = {rule: {"gap_rank": rule[0] or "off", "min_gap": rule[1]} for rule in rules(ranks, gaps)}
    for kind, (q, case) in queries.items():
        if not len(q):
            continue
        own_mask = q @ bank.T / k
        score = own_mask if keys is None else np.maximum(own_mask, q @ keys.T / k - cfg.key_margin)
        best, top = score.argmax(1), score.max(1)
        ranked = -np.sort(-own_mask, axis=1)[:, : max(ranks)]  # the runner-up: edits' own masks only
        ranked = np.pad(ranked, ((0, 0), (0, max(ranks) - ranked.shape[1])))
        multi = np.array([per_subject[subject[c]] >= 3 for c in case])
        for (rank, gap), row in rows.items():
            on = top >= tau
            if rank:
                on &= top - ranked[:, rank - 1] >= gap
            if kind == "unrelated":
                row["unrelated_on"] = float(on.mean())
                continue
            row["para_own"] = float((on & (best == case)).mean())
            row["para_subject"] = float((on & (subject[best] == subject[case])).mean())
            row["para_subject_3plus"] = float((on & (subject[best] == subject[case]))[multi].mean()) if multi.any() \
                else float("nan")
    rows = list(rows.values())
    print(f"{len(cases)} edits, tau {tau:.3f}, pool {cfg.pool}, key_margin {cfg.key_margin}")
    print(common.table(rows, ["gap_rank", "min_gap", "para_own", "para_subject", "para_subject_3plus", "unrelated_on"]))
    run.finish(args.out, edits=len(cases), tau=tau, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
