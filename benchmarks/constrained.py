"""Constrained decoding's cost: generated tokens/s with a JSON schema enforced vs free decoding (issue 22).

    PYTHONPATH=. python benchmarks/constrained.py              # batch 1 and 8, 48 new tokens, 3 repetitions
    PYTHONPATH=. python benchmarks/constrained.py --quick      # batch 8, 16 tokens, 1 repetition

Both conditions run the same chat prompts through the same `Decoder` (prefill, routing,
greedy decoding, end-of-sequence ignored so every sequence makes --tokens new tokens):
  free  no constraint
  json  a JSON schema ({"answer": string of at least 4000 characters}, so the object never
        closes within --tokens) enforced by llguidance per sequence (memoir_core/constraints.py):
        the grammar's compilation per sequence, the token mask each step and its application
Conditions alternate, round-robin, per repetition; tokens/s is total new tokens / wall time, and
tokens per CPU-second of this process is given as well (steadier on a shared machine). The
target is json >= 0.90 x free.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread environment before torch loads)

from memoir_core.constraints import Matcher  # noqa: E402
from memoir_core.generate import GenSequence  # noqa: E402
from memoir_core.sampling import OutputConstraint, SamplingParams  # noqa: E402

QUESTIONS = ["Describe the city of Paris.", "Explain how a bicycle works.", "What do cats eat?",
             "Tell me about the Moon.", "How is bread made?", "Why is the sky blue?", "Describe a forest.",
             "What is a computer?"]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "minLength": 4000}}, "required": ["answer"],
          "additionalProperties": False}


def run(memoir, condition: str, batch: int, tokens: int) -> tuple[int, float, float]:
    constraint = OutputConstraint(SCHEMA) if condition == "json" else None
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True, constraint=constraint)
    wall, cpu = time.perf_counter(), time.process_time()
    seqs = []
    for q in QUESTIONS:
        enc = memoir.encoder.chat([{"role": "user", "content": q}])
        seq = GenSequence(enc.ids, enc.span, params, tail=enc.tail)
        if constraint is not None:
            seq.matcher = Matcher(constraint, memoir.tokenizer, memoir.tokenizer.eos_token_id,
                                  memoir.model.config.vocab_size)
        seqs.append(seq)
    memoir.decoder(batch).run(seqs)
    made = sum(len(s.out_ids) for s in seqs)
    return made, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="batch 8, 16 tokens, 1 repetition")
    ap.add_argument("--model", default="default", help='"default", a Hugging Face id or folder, or "tiny" (smoke)')
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.tokens, args.reps = "8", 16, 1
    common.set_torch_threads()
    bench = common.Run("constrained" + ("_quick" if args.quick else ""), vars(args))
    memoir = common.load_memoir(args.model)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        tally = {c: [0, 0.0, 0.0] for c in ("free", "json")}
        run(memoir, "json", batch, 2)  # warm-up (the tokenizer's conversion for llguidance, once)
        for rep in range(args.reps):
            for c in (("free", "json") if rep % 2 == 0 else ("json", "free")):
                for i, v in enumerate(run(memoir, c, batch, args.tokens)):
                    tally[c][i] += v
        tps = {c: t[0] / t[1] for c, t in tally.items()}
        cps = {c: t[0] / t[2] for c, t in tally.items()}
        rows.append({"batch": batch, "free_tok_s": tps["free"], "json_tok_s": tps["json"],
                     "json_vs_free": tps["json"] / tps["free"], "json_vs_free_cpu": cps["json"] / cps["free"],
                     "tokens": {c: t[0] for c, t in tally.items()}})
        print(f"  batch {batch}: free {tps['free']:.1f} json {tps['json']:.1f} tok/s", flush=True)
    print(common.table(rows, ["batch", "free_tok_s", "json_tok_s", "json_vs_free", "json_vs_free_cpu"]))
    target = all(r["json_vs_free_cpu"] >= 0.9 for r in rows)
    print("target json >= 0.90 x free (CPU time):", "met" if target else "NOT met")
    bench.finish(args.out, rows=rows, target_met=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
