"""bf16 decode steps against fp32 ones, on one memoir (issue 21): speed, routing, answers.

    PYTHONPATH=. MEMOIR_THREADS=2 python benchmarks/bf16_steps.py --edits 50      # ~4 min
    PYTHONPATH=. python benchmarks/bf16_steps.py --quick                          # 8 edits

One Memoir on the default model with packed weights and bf16 copies for decode steps
(memoir_core/packed.py) takes --edits ZsRE dev edits with distinct subjects. Then the same
prompts are generated greedily (--tokens new tokens) twice, with bf16 steps and with the
copies switched off (fp32 steps, the default serving): each edit's question and paraphrase
through the chat template, and its locality question. Reported per prompt kind: the target in
the answer under each, the memory's decision identical (it must be: prompts run at fp32 either
way), the answers identical. Speed: one sequence's decode step, and 4 sequences', interleaved
rounds of each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from chat_traffic import distinct  # noqa: E402

from memoir_core.datasets import load_cases  # noqa: E402
from memoir_core.generate import GenSequence, holds  # noqa: E402
from memoir_core.packed import DecodeSteps  # noqa: E402
from memoir_core.sampling import SamplingParams  # noqa: E402


def build(model: str, steps_on: bool):
    from memoir_core import models
    from memoir_core.memoir import Memoir

    if model == "tiny":
        from tests.support.tiny import make_memoir

        return make_memoir(pack_weights=True, bf16_steps=steps_on)
    m, tok = models.load(None if model == "default" else model)
    return Memoir(m, tok, pack_weights=True, bf16_steps=steps_on)


def step_ms(memoir, encoded, batch: int, tokens: int) -> float:
    """Milliseconds per decode step of `batch` sequences (prefill excluded)."""
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    decoder = memoir.decoder(batch)
    decoder.add([GenSequence(e.ids, e.span, params) for e in encoded[:batch]])
    t0, n = time.perf_counter(), 0
    while decoder.running:
        decoder.step()
        n += 1
    return (time.perf_counter() - t0) / max(n, 1) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help='"default", or "tiny" (smoke run: measures nothing)')
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.edits, args.rounds = 8, 1
    common.set_torch_threads()
    run = common.Run("bf16_steps" + ("_quick" if args.quick else ""), vars(args))
    memoir = build(args.model, True)
    layers = DecodeSteps(memoir.model).layers
    if not layers:
        raise SystemExit("no bf16 copies were made: this CPU has no native bf16, or the model is not fp32 on a CPU")
    cases = distinct(load_cases(args.data), args.edits)
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        memoir.edit(case.prompt, case.target, subject=case.subject)
        print(f"\r  edits {i + 1}/{len(cases)}", end="", flush=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    enc = memoir.encoder
    kinds = {"question": [enc.chat([{"role": "user", "content": c.prompt}]) for c in cases],
             "paraphrase": [enc.chat([{"role": "user", "content": c.rephrases[0]}]) for c in cases if c.rephrases],
             "locality": [enc.chat([{"role": "user", "content": c.loc_prompt}]) for c in cases if c.loc_prompt]}
    targets = {"question": [c.target for c in cases], "paraphrase": [c.target for c in cases if c.rephrases],
               "locality": [None for c in cases if c.loc_prompt]}
    lows = [layer.low for layer in layers]

    def steps(on: bool) -> None:
        for layer, low in zip(layers, lows):
            layer.low = low if on else None

    rows, answers = [], {}
    for kind, prompts in kinds.items():
        out = {}
        for on in (True, False):
            steps(on)
            out[on] = memoir.generate(prompts, SamplingParams(max_new_tokens=args.tokens))
        fast, exact = out[True], out[False]
        same_decision = sum((a.decision.best_edit_id, a.decision.best_overlap, a.decision.route is None)
                            == (b.decision.best_edit_id, b.decision.best_overlap, b.decision.route is None)
                            for a, b in zip(fast, exact))
        row = {"kind": kind, "n": len(prompts), "memory_on": sum(s.decision.route is not None for s in exact) / len(prompts),
               "same_decision": same_decision / len(prompts),
               "same_text": sum(a.text == b.text for a, b in zip(fast, exact)) / len(prompts)}
        if targets[kind][0] is not None:
            row["target_fp32"] = sum(holds(s.text, t) for s, t in zip(exact, targets[kind])) / len(prompts)
            row["target_bf16"] = sum(holds(s.text, t) for s, t in zip(fast, targets[kind])) / len(prompts)
        rows.append(row)
        answers[kind] = [{"fp32": b.text, "bf16": a.text} for a, b in zip(fast, exact) if a.text != b.text][:10]
    print(common.table(rows))
    speed = {f"{mode}_{batch}": [] for mode in ("fp32", "bf16") for batch in (1, 4)}
    prompts = kinds["locality"] or kinds["question"]
    for _ in range(args.rounds):
        for on in (False, True):
            steps(on)
            for batch in (1, 4):
                speed[f"{'bf16' if on else 'fp32'}_{batch}"].append(step_ms(memoir, prompts, batch, 48))
    speed_rows = [{"batch": b, "fp32_ms": min(speed[f"fp32_{b}"]), "bf16_ms": min(speed[f"bf16_{b}"]),
                   "x_fp32": min(speed[f"fp32_{b}"]) / min(speed[f"bf16_{b}"])} for b in (1, 4)]
    print(common.table(speed_rows))
    run.finish(args.out, rows=rows, speed=speed_rows, speed_rounds=speed, differing=answers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
