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

Two studies of generalization's ceiling come with it. `para_answer` counts paraphrases routed
to an edit with their own answer (ZsRE holds "twins": one question reworded with another
answer, whose paraphrases fit either). `--rerank 0.02,0.06` adds rows that, among the edits
within that much of the best match, pick the one whose trained columns (the plain mean's mask,
which the question's wording dominates) overlap the prompt's most: does telling one subject's
relations apart help? And the last line routes each twin's paraphrases by word overlap alone
among its subject's edits: how well a router that reads the words could do.

The rule rows route each prompt as a whole. The last row adds what `tail_routing` does: a
prompt of several sentences is also routed on its last one (prompts.last_sentence), under the
configured rule, and the better match wins.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from routing_study import stream_parser, stream_setup

from memoir_core.prompts import Encoded


def dense(masks: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(masks), width), dtype=np.float32)
    np.put_along_axis(out, np.asarray(masks, dtype=np.int64), 1.0, axis=1)
    return out


def dense_masks(memoir, texts: list, chat: bool = False, columns: bool = False) -> np.ndarray:
    """Routing masks of the texts (columns: the masks of the columns an edit on them would train)."""
    if not texts:  # a data set without paraphrases (the hallucination set)
        return np.zeros((0, memoir.width), dtype=np.float32)
    enc = memoir.encoder
    encoded = [enc.chat([{"role": "user", "content": t}]) if chat else enc.plain(t) for t in texts]
    if columns:
        return dense(memoir.colhash.masks(memoir.features(encoded, centre=None)).numpy(), memoir.width)
    return dense(memoir.tophash.masks(memoir.features(encoded)).numpy(), memoir.width)


def tail_masks(memoir, texts: list) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the texts that hold several sentences, and the routing masks of their last one."""
    encoded = [memoir.encoder.plain(t) for t in texts]
    rows = np.array([i for i, e in enumerate(encoded) if e.tail is not None], dtype=np.int64)
    if not len(rows):
        return rows, np.zeros((0, memoir.width), dtype=np.float32)
    tails = [Encoded(encoded[i].ids, encoded[i].tail) for i in rows]
    return rows, dense(memoir.tophash.masks(memoir.features(tails)).numpy(), memoir.width)


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def lexical_twin_oracle(cases) -> tuple[int, float]:
    """Paraphrases of cases whose subject has another case with another answer, and the share of
    them whose most word-similar (Jaccard) prompt among that subject's cases has their answer."""
    by_subject = defaultdict(list)
    for i, c in enumerate(cases):
        by_subject[str(c.subject)].append(i)
    answer = [c.target.strip().lower() for c in cases]
    hits = []
    for i, c in enumerate(cases):
        group = by_subject[str(c.subject)]
        if all(answer[j] == answer[i] for j in group):
            continue
        for r in c.rephrases:
            asked = words(r)
            nearest = max(group, key=lambda j: len(asked & words(cases[j].prompt)) / len(asked | words(cases[j].prompt)))
            hits.append(answer[nearest] == answer[i])
    return len(hits), (sum(hits) / len(hits) if hits else float("nan"))


def rules(ranks: list[int], gaps: list[float]) -> list[tuple[int, float]]:
    return [(0, 0.0)] + [(r, g) for r in ranks for g in gaps]


def main(argv=None) -> int:
    ap = stream_parser(__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="6,8,10")
    ap.add_argument("--gaps", default="0.04,0.06,0.08")
    ap.add_argument("--rerank", default="", help="margins under the best match to re-rank by trained columns, "
                    "e.g. 0.02,0.06 (one more feature pass over prompts and paraphrases)")
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
    texts = {"paraphrase": [r for c in cases for r in c.rephrases],
             "unrelated": [c.loc_prompt for c in cases if c.loc_prompt]}
    queries = {"paraphrase": (dense_masks(memoir, texts["paraphrase"]), para_case),
               "unrelated": (dense_masks(memoir, texts["unrelated"]), loc_case)}
    tails = {kind: tail_masks(memoir, ts) for kind, ts in texts.items()}
    subject = np.array([str(c.subject) for c in cases])
    answer = np.array([c.target.strip().lower() for c in cases])
    reranks = [float(d) for d in args.rerank.split(",") if d]
    if reranks:
        print("  column masks of prompts and paraphrases (--rerank)", file=sys.stderr, flush=True)
        columns = dense_masks(memoir, [c.prompt for c in cases], columns=True)
        para_columns = dense_masks(memoir, [r for c in cases for r in c.rephrases], columns=True)
    per_subject = Counter(subject)
    tau = cfg.tau_at(len(cases))
    k = cfg.k
    ranks = [int(r) for r in args.ranks.split(",")]
    gaps = [float(g) for g in args.gaps.split(",")]
    rows = {rule: {"gap_rank": rule[0] or "off", "min_gap": rule[1]} for rule in rules(ranks, gaps)}
    # re-ranked rows: the configured gap rule decides on/off, the columns pick among near-best edits
    rows.update({("rerank", d): {"gap_rank": f"{cfg.gap_rank}, re-rank within {d}", "min_gap": cfg.min_gap}
                 for d in reranks})
    rows[("tail", cfg.min_gap)] = {"gap_rank": f"{cfg.gap_rank}, + last sentence", "min_gap": cfg.min_gap}
    depth = max([*ranks, cfg.gap_rank])

    def match(q: np.ndarray):
        """Scores [n, edits], best edit, its score, and the stored masks' ranked overlaps [n, depth]."""
        own_mask = q @ bank.T / k
        score = own_mask if keys is None else np.maximum(own_mask, q @ keys.T / k - cfg.key_margin)
        ranked = -np.sort(-own_mask, axis=1)[:, :depth]  # the runner-up: edits' own masks only
        return score, score.argmax(1), score.max(1), np.pad(ranked, ((0, 0), (0, depth - ranked.shape[1])))

    for kind, (q, case) in queries.items():
        if not len(q):
            continue
        score, best, top, ranked = match(q)
        multi = np.array([per_subject[subject[c]] >= 3 for c in case])
        for (rank, gap), row in rows.items():
            pick = best
            if rank == "rerank":
                rank, near, gap = cfg.gap_rank, gap, cfg.min_gap
                if kind == "paraphrase":
                    col = para_columns @ columns.T
                    pick = np.where(score >= top[:, None] - near, col, -1).argmax(1)
            if rank == "tail":
                rank = cfg.gap_rank
                on = (top >= tau) & (top - ranked[:, rank - 1] >= gap)
                tail_rows, tail_q = tails[kind]
                if len(tail_rows):  # as Routing.decide: the tail wins where it is on and matches better
                    _, t_best, t_top, t_ranked = match(tail_q)
                    t_on = (t_top >= tau) & (t_top - t_ranked[:, rank - 1] >= gap)
                    wins = t_on & (~on[tail_rows] | (t_top > top[tail_rows]))
                    pick = best.copy()
                    pick[tail_rows[wins]] = t_best[wins]
                    on = on.copy()
                    on[tail_rows[wins]] = True
            else:
                on = top >= tau
                if rank:
                    on &= top - ranked[:, rank - 1] >= gap
            if kind == "unrelated":
                row["unrelated_on"] = float(on.mean())
                continue
            row["para_own"] = float((on & (pick == case)).mean())
            row["para_answer"] = float((on & (answer[pick] == answer[case])).mean())
            row["para_subject"] = float((on & (subject[pick] == subject[case])).mean())
            row["para_subject_3plus"] = float((on & (subject[pick] == subject[case]))[multi].mean()) if multi.any() \
                else float("nan")
    rows = list(rows.values())
    twins, lexical = lexical_twin_oracle(cases)
    print(f"{len(cases)} edits, tau {tau:.3f}, pool {cfg.pool}, key_margin {cfg.key_margin}")
    print(common.table(rows, ["gap_rank", "min_gap", "para_own", "para_answer", "para_subject", "para_subject_3plus",
                              "unrelated_on"]))
    print(f"{twins} paraphrases of twin cases (same subject, another answer); routed by word overlap among "
          f"their subject's edits, {lexical:.3f} reach their own answer")
    print(f"prompts of several sentences: {len(tails['paraphrase'][0])} of {len(para_case)} paraphrases, "
          f"{len(tails['unrelated'][0])} of {len(loc_case)} locality prompts")
    run.finish(args.out, edits=len(cases), tau=tau, rows=rows, twin_paraphrases=twins, lexical_twin_oracle=lexical,
               several_sentences={kind: len(t[0]) for kind, t in tails.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
