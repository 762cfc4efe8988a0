"""Inference overhead: generated tokens/s of the base model vs memory off vs memory on (issue 6, item 2).

    PYTHONPATH=. python benchmarks/inference.py                  # banks of 0, 1k, 10k edits; batch 1 and 8
    PYTHONPATH=. python benchmarks/inference.py --quick          # banks of 0 and 100; 8 new tokens

All three conditions run the same prompts (8 ZsRE dev questions) through the same `Decoder`
loop (prefill with per-sequence routing, then greedy decoding, EOS ignored so that every sequence
makes --tokens new tokens; continuous batching):
  base        the memory layer unwired: the block's plain projection (the base model)
  memory off  the memory wired, routing done at prefill for every sequence (features, TopHash,
              a scan of the whole bank, the subject lookup), no stored mask reaches tau
              (tau and subject_tau set above 1 for the run)
  memory on   the same, every prompt routed to an edit (its own mask is in the bank): the
              k-column gather runs at every position and token
Bank: synthetic edits inserted directly (not trained): random k-subsets of the D columns as
masks, and random W_m values (normal, std 1e-3, on the int64 grid) as the memory, plus one edit
per benchmark prompt whose mask is that prompt's own. Every edit has a subject, as edits made
today do (the prompts' own from the data file; the synthetic ones named after the subjects of
--subjects-from, numbered past its end), so each prompt is also looked up in the subject index;
`--no-subjects` routes on masks alone. Per bank size, the conditions are
interleaved, round-robin, for --reps repetitions; tokens/s is total new tokens / total wall
time, and tokens per CPU-second (this process's CPU time) is given too: on a shared machine it
is the steadier figure (other processes take wall time, not this process's CPU time).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread environment before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from memoir_core import arch  # noqa: E402
from memoir_core.datasets import load_cases, unedited_subjects  # noqa: E402
from memoir_core.generate import Decoder, GenSequence, SamplingParams  # noqa: E402
from memoir_core.memory_layer import Decision, ResidualMemory  # noqa: E402
from memoir_core.records import EditRecord  # noqa: E402
from memoir_core.residual import SCALE  # noqa: E402


class BaseLayer(torch.nn.Module):
    """The plain projection, plus only the bookkeeping the Decoder needs (every row: memory off)."""

    def __init__(self, base_layer):
        super().__init__()
        self.base_layer = base_layer
        self.routing = None

    def forward(self, x):
        r = self.routing
        if r is not None and r.pending:
            r.decisions = [Decision(None, None, 0.0, 0)] * x.shape[0]
            r.decide = r.span = r.active = r.tail = None
        return self.base_layer(x)

    use = ResidualMemory.use


def decode(memoir, layer, decide, prompts: list[str], params: SamplingParams,
           batch: int) -> list[GenSequence]:
    """Memoir._run with a given layer: continuous batching, up to `batch` sequences at once."""
    seqs = [GenSequence(e.ids, e.span, params) for e in map(memoir.encode, prompts)]
    decoder = Decoder(memoir.model, layer, decide, memoir.encoder, batch, centre=memoir.pool_centre)
    decoder.eos = set()  # every sequence makes exactly max_new_tokens: the same work in every condition
    decoder.run(seqs)
    return seqs


class Bench:
    def __init__(self, memoir, cases, names: list[str]):
        self.m = memoir
        self.prompts = [c.prompt for c in cases]
        self.subjects = [c.subject for c in cases]
        self.names = names
        spec = arch.spec_for(memoir.model)
        self.down_path = f"{spec.blocks}.{memoir.config.layer}.{spec.down}"
        self.own = memoir.masks([memoir.encoder.plain(p) for p in self.prompts]).numpy()
        self.delta = torch.zeros(memoir.d_out, memoir.config.k, dtype=torch.int32)  # shared: records keep idx only
        self.rng = np.random.default_rng(0)
        self.synthetic = 0
        self.config = memoir.config
        gen = torch.Generator().manual_seed(0)
        acc = (torch.randn(memoir.d_out, memoir.width, generator=gen) * 1e-3 * SCALE).round().long()
        self._rebuild(acc)

    def _record(self, eid: str, idx: np.ndarray, subject: str | None) -> EditRecord:
        return EditRecord(id=eid, prompt=eid, target_new="x", idx=torch.from_numpy(idx.astype(np.int64)),
                          delta=self.delta, subject=subject, subject_source=subject and "given")

    def _rebuild(self, acc: torch.Tensor | None = None) -> None:
        """Bank = the synthetic edits + one edit per prompt (its own mask); `acc`: a W_m to load."""
        m = self.m
        ids = [f"own-{i}" for i in range(len(self.prompts))]
        masks = [self.own[i] for i in range(len(self.prompts))]
        subjects = list(self.subjects) if self.names else [None] * len(ids)
        for j, (eid, idx) in enumerate(self._synth.items() if hasattr(self, "_synth") else ()):
            ids.append(eid)
            masks.append(idx)
            if self.names:
                name = self.names[j % len(self.names)]
                subjects.append(name if j < len(self.names) else f"{name} {j // len(self.names)}")
            else:
                subjects.append(None)
        m.memory.load_bank(ids, np.stack(masks), {eid: self._record(eid, idx, s)
                                                   for eid, idx, s in zip(ids, masks, subjects, strict=True)}, acc=acc)

    def grow(self, n: int) -> None:
        if not hasattr(self, "_synth"):
            self._synth = {}
        k, width = self.m.config.k, self.m.width
        add = n - len(self._synth)
        if add > 0:
            idx = np.sort(np.argsort(self.rng.random((add, width)), axis=1)[:, :k], axis=1)
            for i, row in enumerate(idx):
                self._synth[f"syn-{len(self._synth):07d}"] = row
        self._rebuild()

    def run(self, condition: str, batch: int, tokens: int) -> tuple[int, float, int, float]:
        """-> (new tokens, seconds, sequences with the memory on, CPU seconds of this process)."""
        m = self.m
        params = SamplingParams(max_new_tokens=tokens)
        layer = m.layer
        used = layer
        if condition == "base":
            used = BaseLayer(layer.base_layer)
            arch.set_path(m.model, self.down_path, used)
        m.config = dataclasses.replace(self.config, tau=2.0, subject_tau=2.0) if condition == "off" else self.config
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            seqs = decode(m, used, m.decide, self.prompts, params, batch)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            arch.set_path(m.model, self.down_path, layer)
            m.config = self.config
        on = sum(s.decision is not None and s.decision.route is not None for s in seqs)
        return sum(len(s.out_ids) for s in seqs), seconds, on, cpu


def targets_of(rows: list[dict]) -> dict:
    """The issue's targets at the largest bank, judged on the CPU-time ratios (wall-time ratios
    are given too: on a machine shared with other work they swing by tens of percent)."""
    big = [r for r in rows if r["edits"] == max(r["edits"] for r in rows)]
    return {"at_edits": big[0]["edits"],
            "off_ge_0.99x_base": all(r["off_vs_base_cpu"] >= 0.99 for r in big),
            "on_ge_0.95x_base": all(r["on_vs_base_cpu"] >= 0.95 for r in big),
            "wall_off_ge_0.99x_base": all(r["off_vs_base"] >= 0.99 for r in big),
            "wall_on_ge_0.95x_base": all(r["on_vs_base"] >= 0.95 for r in big)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(common.ZSRE_DEV))
    ap.add_argument("--subjects-from", default=str(common.COUNTERFACT_TRAIN),
                    help="the synthetic edits' subjects: this file's, other than the prompts' own")
    ap.add_argument("--no-subjects", action="store_true", help="edits without subjects: masks alone route")
    ap.add_argument("--sizes", default="0,1000,10000", help="synthetic edits in the bank")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=24, help="new tokens per sequence (greedy, EOS ignored)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="banks of 0 and 100, 8 tokens, 1 repetition")
    ap.add_argument("--model", default="default", help='"default", a Hugging Face id or folder, or "tiny" '
                    "(the tests' random model: a smoke run, no meaningful figures)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.tokens, args.reps = "0,100", 8, 1
    common.set_torch_threads()
    run = common.Run("inference" + ("_quick" if args.quick else ""), vars(args))
    memoir = common.load_memoir(args.model)
    cases = load_cases(args.data, limit=8)
    prompts = [c.prompt for c in cases]
    names = [] if args.no_subjects else unedited_subjects([args.subjects_from], cases)
    bench = Bench(memoir, cases, names)
    conditions = ["base", "off", "on"]
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        bench.grow(n)
        for batch in [int(b) for b in args.batches.split(",")]:
            tally = {c: [0, 0.0, 0, 0.0] for c in conditions}
            bench.run("on", batch, 2)  # warm-up
            for rep in range(args.reps):
                order = conditions[rep % 3:] + conditions[: rep % 3]  # rotate who goes first
                for c in order:
                    toks, secs, on, cpu = bench.run(c, batch, args.tokens)
                    tally[c][0] += toks
                    tally[c][1] += secs
                    tally[c][2] += on
                    tally[c][3] += cpu
            tps = {c: tally[c][0] / tally[c][1] for c in conditions}
            cps = {c: tally[c][0] / tally[c][3] for c in conditions}  # tokens per CPU-second
            row = {"edits": n, "bank": len(memoir.bank), "batch": batch, "subjects": not args.no_subjects,
                   "base_tok_s": tps["base"], "off_tok_s": tps["off"], "on_tok_s": tps["on"],
                   "off_vs_base": tps["off"] / tps["base"], "on_vs_base": tps["on"] / tps["base"],
                   "off_vs_base_cpu": cps["off"] / cps["base"], "on_vs_base_cpu": cps["on"] / cps["base"],
                   "base_tok_per_cpu_s": cps["base"],
                   "on_share": tally["on"][2] / (len(prompts) * args.reps),
                   "off_share_on": tally["off"][2] / (len(prompts) * args.reps),
                   "tokens": {c: tally[c][0] for c in conditions}, "seconds": {c: tally[c][1] for c in conditions},
                   "cpu_seconds": {c: tally[c][3] for c in conditions}}
            rows.append(row)
            print(f"  {n} edits, batch {batch}: base {tps['base']:.1f} off {tps['off']:.1f} on {tps['on']:.1f} tok/s",
                  flush=True)
    cols = ["edits", "bank", "batch", "base_tok_s", "off_tok_s", "on_tok_s", "off_vs_base", "on_vs_base",
            "base_tok_per_cpu_s", "off_vs_base_cpu", "on_vs_base_cpu", "on_share"]
    print(common.table(rows, cols))
    targets = targets_of(rows)
    print("targets:", targets)
    run.finish(args.out, rows=rows, targets=targets, prompts=prompts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
