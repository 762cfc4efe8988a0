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
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
from other_questions import distinct_cases

from memoir_core.forms import statement_form
from memoir_core.neighbours import RELATIONS

THRESHOLDS = (0.6, 0.7, 0.8, 0.86, 0.9)
PAIRS = (("paraphrase", "other question"), ("paraphrase, chat", "other question, chat"))


@torch.inference_mode()
def last_input(memoir, encoded) -> torch.Tensor:
    """The memory's input at the prompt's last token -> [D] fp32 (memory off)."""
    return memoir.prompt_acts([encoded], None).acts[0, len(encoded.ids) - 1].float().cpu()


def cosines(memoir, case) -> list[tuple[str, float]]:
    """(kind, cosine with the key of its form) of each prompt asked about one case."""
    mu = memoir.basis.background_mean.float().cpu()
    plain = memoir.encoder.plain
    chat = lambda q: memoir.encoder.chat([{"role": "user", "content": q}])  # noqa: E731
    idx = memoir.colhash.masks(memoir.features([plain(case.prompt)], centre=None))[0]

    def on_columns(encoded) -> torch.Tensor:
        return (last_input(memoir, encoded) - mu)[idx]

    keys = {"bare": on_columns(plain(case.prompt)), "chat": on_columns(chat(case.prompt))}

    def cos(encoded, form: str) -> float:
        return float(torch.nn.functional.cosine_similarity(on_columns(encoded), keys[form], dim=0))

    out = [("paraphrase", cos(plain(case.rephrases[0]), "bare")),
           ("paraphrase, chat", cos(chat(case.rephrases[0]), "chat"))]
    statement = statement_form(case.prompt, case.subject)
    if statement:
        out.append(("statement", cos(plain(statement), "bare")))
    for template in RELATIONS:
        q = template.format(s=case.subject)
        out += [("other question", cos(plain(q), "bare")), ("other question, chat", cos(chat(q), "chat"))]
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
        asked += cosines(memoir, case)
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
    for keep, drop in PAIRS:
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
