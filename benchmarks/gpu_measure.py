"""The measurements of gpu_check.py, one function per part of issue 25 (correctness, edit time,
serving, memory per edit, routing). Each takes a Memoir on the device under test and returns
a dict; gpu_check.py builds the models, runs them and prints the table."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch

from memoir_core import arch
from memoir_core.devicebank import DeviceMaskBank
from memoir_core.generate import GenSequence, SamplingParams
from memoir_core.maskbank import MaskBank
from memoir_core.memory_layer import BatchRouting, Decision
from memoir_core.records import EditRecord
from memoir_core.residual import quantise

NAMES = ["Zorblax", "Quillon", "Varnet", "Ostrava", "Peliko", "Drummel", "Tasker", "Ibarra", "Monceau", "Yoruk",
         "Halvard", "Essendi", "Brakko", "Lunette", "Corvain", "Maritza", "Oduya", "Fennick", "Savrin", "Aldecott"]
ATTRS = ["capital", "founder", "chief executive", "native language", "home town", "favourite colour", "author",
         "head coach", "mother tongue", "largest river"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def facts(n: int, seed: int) -> list[tuple[str, str]]:
    """n random facts: made-up subjects and answers (on random weights nothing is known anyway)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = rng.choice(NAMES, 2, replace=False)
        out.append((f"What is the {ATTRS[i % len(ATTRS)]} of {a} {i}?", f"{b} {rng.integers(10, 99)}"))
    return out


def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def batch_of(m, prompts: list[str]):
    enc = [m.encoder.plain(p) for p in prompts]
    width = max(len(e.ids) for e in enc)
    ids = torch.full((len(enc), width), m.encoder.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, width - len(e.ids):] = torch.tensor(e.ids)
        mask[i, width - len(e.ids):] = 1
    return ids.to(m.device), mask.to(m.device)


def synthetic(m, edit_id: str, idx: np.ndarray, delta: torch.Tensor, route=None) -> EditRecord:
    """A stored edit applied without training: its columns, a given delta, its routing mask."""
    return EditRecord(id=edit_id, prompt=f"synthetic {edit_id}", target_new="x", idx=torch.from_numpy(np.sort(idx)),
                      delta=delta, route=None if route is None else [int(c) for c in route])


def random_idx(rng, m) -> np.ndarray:
    return np.sort(rng.choice(m.width, size=m.config.k, replace=False))


# -- 1. correctness ----------------------------------------------------------------------------
def exactness(m, ref: torch.Tensor, prompts: list[str]) -> dict:
    """On a fresh memory (W_m all zero): memory off, and memory on through an edit whose delta
    is zero, give `ref`, the logits of `prompts` from the model before the memory wrapped it."""
    if m.edits:
        raise ValueError("exactness needs an empty memory: stored edits' deltas sit on W_m's columns")
    out = {}
    ids, mask = batch_of(m, prompts)
    with torch.inference_mode():
        out["memory_off_exact"] = bool(torch.equal(_logits(m.model, ids, mask), ref))
        zero = synthetic(m, "zero-memory", random_idx(np.random.default_rng(0), m),
                         torch.zeros(m.d_out, m.config.k, dtype=torch.int32))
        m.apply(zero)
        route = m._route(zero.id)
        with m.layer.use(BatchRouting.fixed([Decision(route, zero.id, 1.0, m.version)] * ids.shape[0])):
            out["memory_zero_exact"] = bool(torch.equal(_logits(m.model, ids, mask), ref))
        m.remove(zero.id)
    return out


def correctness(m, edit_prompts: list[str], other_prompts: list[str]) -> dict:
    """With edits stored: an edit's columns, rollback, mixed batches, KV cache."""
    out = {}
    acc, weight = m.weights.acc.clone(), m.weights.weight.clone()
    rec = m.edit("What is the home town of Ostrava Peliko?", "Varnet 12")
    changed = ((m.weights.weight != weight).any(dim=0)).nonzero()[:, 0].cpu()
    out["edit_changes_only_its_columns"] = bool(changed.numel() > 0 and torch.isin(changed, rec.idx).all())
    out["edit_changed_columns"] = int(changed.numel())
    m.remove(rec.id)
    out["rollback_bit_exact"] = bool(torch.equal(m.weights.acc, acc) and torch.equal(m.weights.weight, weight))
    out.update(_mixed_batch(m, edit_prompts + other_prompts))
    out.update(_cache_vs_recompute(m, edit_prompts[:1] + other_prompts[:1]))
    return out


PASS = ("memory_off_exact", "memory_zero_exact", "edit_changes_only_its_columns", "rollback_bit_exact",
        "mixed_batch_routes_as_alone", "kv_cache_matches")


def _mixed_batch(m, prompts: list[str]) -> dict:
    """Each sequence of a mixed batch is routed as alone: the same best edit, and the same on/off
    unless its overlap sits at tau within what padding moved it (in bf16 a padded batch's
    activations round differently: a column at the top-k margin may flip, 1/k of overlap)."""
    params = SamplingParams(max_new_tokens=4)
    together = m.generate(prompts, params, max_batch=len(prompts))
    alone = [m.generate([p], params)[0] for p in prompts]
    same, borderline = True, 0
    for a, b in zip(together, alone, strict=True):
        moved = abs(a.decision.best_overlap - b.decision.best_overlap) + 1 / m.config.k
        on_a, on_b = a.decision.route is not None, b.decision.route is not None
        if a.decision.best_edit_id != b.decision.best_edit_id or on_a != on_b:
            at_tau = a.decision.best_edit_id == b.decision.best_edit_id \
                and abs(b.decision.best_overlap - m.tau) <= moved
            borderline += at_tau
            same = same and at_tau
    return {"mixed_batch_routes_as_alone": same, "mixed_batch_borderline_at_tau": borderline,
            "mixed_batch_on": sum(s.decision.route is not None for s in together), "mixed_batch_size": len(prompts),
            "mixed_batch_max_overlap_diff": max(abs(a.decision.best_overlap - b.decision.best_overlap)
                                                for a, b in zip(together, alone, strict=True)),
            "mixed_batch_same_tokens": sum(a.out_ids == b.out_ids for a, b in zip(together, alone, strict=True))}


def _cache_vs_recompute(m, prompts: list[str], n: int = 8) -> dict:
    """Greedy tokens from the KV-cache decoder against one forward over prompt + tokens with the
    same routing: each token must be the recomputed argmax, within a dtype's rounding."""
    dec = m.decoder(len(prompts))
    dec.eos = set()
    seqs = [GenSequence(e.ids, e.span, SamplingParams(max_new_tokens=n), tail=e.tail)
            for e in map(m.encode, prompts)]
    dec.run(seqs)
    tol = 1e-3 if m.model.dtype == torch.float32 else 0.125
    worst, exact = 0.0, 0
    with torch.inference_mode():
        for s in seqs:
            ids = torch.tensor([s.prompt_ids + s.out_ids[:-1]], device=m.device)
            span = torch.zeros(ids.shape, dtype=torch.bool)
            span[0, s.span[0]:s.span[1]] = True
            active = torch.zeros(ids.shape, dtype=torch.bool)
            active[0, s.span[0]:] = True
            routing = BatchRouting(decide=lambda *_a, d=s.decision, **_k: [d], span=span, active=active,
                                   centre=m.pool_centre)
            with m.layer.use(routing):
                logits = m.model(input_ids=ids, use_cache=False).logits[0, len(s.prompt_ids) - 1:].float()
            got = logits.gather(1, torch.tensor(s.out_ids, device=m.device)[:, None])[:, 0]
            gap = logits.max(dim=1).values - got
            worst, exact = max(worst, float(gap.max())), exact + int((gap == 0).sum())
    return {"kv_cache_matches": worst <= tol, "kv_cache_max_logit_gap": worst, "kv_cache_tolerance": tol,
            "kv_cache_tokens_exact": f"{exact}/{n * len(seqs)}"}


# -- 2. edit time ------------------------------------------------------------------------------
def edit_times(m, n: int, seed: int) -> tuple[dict, list[EditRecord]]:
    """n edits of random facts, each timed step by step: preparation, first step, later steps."""
    cuda = m.device.type == "cuda"
    rows, records = [], []
    for prompt, target in facts(n, seed):
        base = torch.cuda.memory_allocated(m.device) if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats(m.device)
        sync(m.device)
        t0 = time.perf_counter()
        gen, marks = m.propose(prompt, target), []
        try:
            while True:
                next(gen)
                marks.append(time.perf_counter())  # each step ends on a loss read: synced
        except StopIteration as stop:
            proposal = stop.value
        t_commit = time.perf_counter()
        rec = m.commit(proposal)  # W_m on the device; the key guard's D x D matrix on the host
        sync(m.device)
        total = time.perf_counter() - t0
        steps = rec.steps
        first = marks[-steps] - marks[-steps - 1] if steps else float("nan")
        later = (marks[-1] - marks[-steps]) / (steps - 1) if steps > 1 else float("nan")
        rows.append({"seconds": total, "steps": steps, "prepare": proposal.timings["prepare"], "first_step": first,
                     "later_step": later,
                     "finish": t_commit - marks[-1], "commit": t0 + total - t_commit,
                     "loss_first": proposal.outcome.losses[0], "loss_last": proposal.outcome.loss,
                     "peak_vram_mb": (torch.cuda.max_memory_allocated(m.device) - base) / 2**20 if cuda else None})
        records.append(rec)
    med = lambda key: statistics.median(r[key] for r in rows if r[key] == r[key])  # noqa: E731
    return {"edits": n, "median_s": med("seconds"), "p90_s": sorted(r["seconds"] for r in rows)[int(0.9 * (n - 1))],
            "median_steps": med("steps"), "median_prepare_s": med("prepare"), "median_first_step_s": med("first_step"),
            "median_finish_s": med("finish"), "median_commit_s": med("commit"),
            "median_later_step_s": med("later_step") if any(r["later_step"] == r["later_step"] for r in rows) else None,
            "loss_fell": sum(r["loss_last"] < r["loss_first"] for r in rows),
            "peak_vram_mb": max(r["peak_vram_mb"] for r in rows) if cuda else None, "each": rows}, records


# -- 3. serving --------------------------------------------------------------------------------
def store_synthetic(m, n: int, route_prompts: list[str], seed: int) -> dict:
    """n stored edits applied without training (Memoir.apply of records with a given delta): the
    first len(route_prompts) route from those prompts' masks, the rest from random masks. They
    share one delta tensor, so host RAM holds one delta, not n (memory_per_edit says what n
    would cost)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    delta = quantise(torch.randn(m.d_out, m.config.k, generator=gen) * 1e-4)
    masks = m.masks([m.encoder.plain(p) for p in route_prompts]).numpy()
    rss0, vram0 = rss_mb(), torch.cuda.memory_allocated(m.device) if m.device.type == "cuda" else 0
    t0 = time.perf_counter()
    for i in range(n):
        route = masks[i] if i < len(masks) else random_idx(rng, m)
        m.apply(synthetic(m, f"syn-{i}", random_idx(rng, m), delta, route))
    sync(m.device)
    vram = (torch.cuda.memory_allocated(m.device) - vram0) if m.device.type == "cuda" else None
    return {"stored": n, "apply_s": time.perf_counter() - t0, "rss_growth_mb": rss_mb() - rss0,
            "vram_growth_mb": None if vram is None else vram / 2**20}


class _Unwrapped:
    """Stands in for the memory layer while the model runs without it (the base figure): every
    sequence is decided off at prefill without reading an activation."""

    @contextmanager
    def use(self, routing):
        if routing is not None and routing.pending:
            routing.decisions = [Decision(None, None, 0.0, 0)] * routing.span.shape[0]
            routing.decide = routing.span = routing.active = routing.tail = None
        yield routing


@contextmanager
def unwrapped(m):
    path = f"{arch.spec_for(m.model).blocks}.{m.config.layer}.{arch.spec_for(m.model).down}"
    arch.set_path(m.model, path, m.layer.base_layer)
    try:
        yield
    finally:
        arch.set_path(m.model, path, m.layer)


def _decode(m, mode: str, prompts, tokens: int) -> dict:
    dec = m.decoder(len(prompts), memory=mode == "on")
    dec.eos = set()  # random weights emit an end token anywhere: every sequence runs its full length
    if mode == "base":
        dec.layer = _Unwrapped()
    seqs = [GenSequence(e.ids, e.span, SamplingParams(max_new_tokens=tokens), tail=e.tail) for e in prompts]
    sync(m.device)
    t0 = time.perf_counter()
    dec.add(seqs)
    t1 = time.perf_counter()  # the first tokens are read to the host: synced
    while dec.running:
        dec.step()
    t2 = time.perf_counter()
    n = sum(len(s.out_ids) for s in seqs)
    return {"ttft_s": t1 - t0, "decode_tok_s": (n - len(seqs)) / max(t2 - t1, 1e-9), "tok_s": n / (t2 - t0),
            "on": sum(s.decision is not None and s.decision.route is not None for s in seqs)}


def serving(m, prompts: list[str], batches: list[int], tokens: int, reps: int) -> list[dict]:
    """Tokens/s and time to first token of the base model, memory off and memory on, at each
    batch size, the three interleaved in every repetition (after one short warm-up each)."""
    enc = [m.encoder.plain(p) for p in prompts]
    rows = []
    for b in batches:
        batch = [enc[i % len(enc)] for i in range(b)]
        runs: dict[str, list[dict]] = {"base": [], "off": [], "on": []}
        for rep in range(reps + 1):
            for mode in runs:
                if mode == "base":
                    with unwrapped(m):
                        r = _decode(m, mode, batch, tokens if rep else 4)
                else:
                    r = _decode(m, mode, batch, tokens if rep else 4)
                if rep:
                    runs[mode].append(r)
        med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}
        rows.append({"batch": b, "tokens": tokens,
                     **{f"{mode}_tok_s": med[mode]["tok_s"] for mode in runs},
                     **{f"{mode}_ttft_ms": 1000 * med[mode]["ttft_s"] for mode in runs},
                     "on_vs_base": med["on"]["tok_s"] / med["base"]["tok_s"],
                     "off_vs_base": med["off"]["tok_s"] / med["base"]["tok_s"],
                     "on_decode_vs_base": med["on"]["decode_tok_s"] / med["base"]["decode_tok_s"],
                     "memory_on_sequences": int(med["on"]["on"])})
    return rows


# -- 4. memory per stored edit -----------------------------------------------------------------
def rss_mb() -> float:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def memory_per_edit(m, stored: dict) -> dict:
    """What one stored edit costs, computed from the structures that hold it, beside the fixed
    cost (W_m's int64 accumulator and fp32 copy, the key guard's D x D matrix)."""
    k, d_out, width = m.config.k, m.d_out, m.width
    mask = m.bank.bytes_per_mask
    routing_bytes = mask + m.guard.columns.bytes_per_mask + 8 * k + 16  # route mask, column index, idx, bank ids
    inputs = 32 * k * 2 if m.config.protect > 0 else 0  # guard factor, fp16 [32, k]
    delta = d_out * k * 4
    n = stored["stored"]
    return {"fixed_vram_mb": (m.weights.acc.nbytes + m.weights.weight.nbytes) / 2**20,
            "fixed_guard_host_mb": width * width * 8 / 2**20 if m.config.protect > 0 else 0.0,
            "vram_per_edit_bytes": None if stored["vram_growth_mb"] is None else stored["vram_growth_mb"] * 2**20 / n,
            "host_per_edit_bytes_deltas_on_heap": routing_bytes + inputs + delta,
            "host_per_edit_bytes_deltas_off_heap": routing_bytes + inputs,
            "delta_bytes": delta,
            "route_cache_bytes_per_routed_edit": k * d_out * 4,
            "rss_growth_per_edit_bytes_shared_delta": stored["rss_growth_mb"] * 2**20 / n}


# -- 5. routing --------------------------------------------------------------------------------
def routing(width: int, k: int, sizes: list[int], device: torch.device, seed: int, reps: int = 5) -> list[dict]:
    """Best match (rank 8, as serving asks) over banks of random masks: the numba CPU scan
    against the torch scan on `device`, same answers required."""
    rng = np.random.default_rng(seed)
    words = (width + 63) // 64
    query = np.sort(rng.choice(width, size=k, replace=False))
    rows = []
    for n in sizes:
        bits = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64, endpoint=False)
        bits[:, -1] &= np.uint64((1 << (width - 64 * (words - 1))) - 1) if width % 64 else np.uint64(2**64 - 1)
        ids = [f"e{i}" for i in range(n)]
        cpu = MaskBank.restore(width, k, ids, bits)
        dev = DeviceMaskBank(width, k, ids, bits, device)
        del bits
        times = {}
        for name, bank in (("cpu", cpu), ("device", dev)):
            bank.best(query[None], rank=8)  # warm-up (compilation, the first kernel launch)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                answer = bank.best(query[None], rank=8)
                ts.append(time.perf_counter() - t0)
            times[name] = (statistics.median(ts), answer)
        rows.append({"masks": n, "width": width, "k": k, "cpu_ms": 1000 * times["cpu"][0],
                     "device_ms": 1000 * times["device"][0], "speedup": times["cpu"][0] / times["device"][0],
                     "agree": times["cpu"][1] == times["device"][1], "bank_mb": n * words * 8 / 2**20})
        del cpu, dev
    return rows
