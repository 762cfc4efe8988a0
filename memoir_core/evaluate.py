"""The EasyEdit metrics (reliability, generalization, locality) and the greedy checks a user sees.

Sequential protocol: apply all T edits one after another, then evaluate every edit on the
final model. Routing is decided from the prompt alone, as the server does at prefill.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .datasets import Case
from .errors import InvalidRequestError
from .generate import SamplingParams
from .memoir import Memoir
from .memory_layer import BatchRouting, Decision
from .prompts import Encoded


@dataclass
class Scored:
    predictions: list[list[int]]  # argmax at each target position
    nll: list[float]  # mean negative log-likelihood of the target tokens
    decisions: list[Decision]


@torch.inference_mode()
def teacher_forced(memoir: Memoir, contexts: list[Encoded], targets: list[list[int]], *, memory: bool = True,
                   batch_size: int = 16) -> Scored:
    """Argmax predictions and NLL at the target positions of `context + target`, routed on the context span."""
    n = len(contexts)
    preds: list[list[int]] = [[] for _ in range(n)]
    nlls, decisions = [0.0] * n, [None] * n
    # Batches of similar length pad less: CounterFact's paraphrases are two sentences, its
    # prompts one, and a left-padded batch runs every row at the longest row's length.
    order = sorted(range(n), key=lambda i: len(contexts[i].ids) + len(targets[i]))
    backbone, head = memoir.model.base_model, memoir.model.get_output_embeddings()
    decide = memoir.decide if memory else memoir._decide_off
    dev = memoir.device
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        ctxs, tgts = [contexts[i] for i in rows], [targets[i] for i in rows]
        seqs = [c.ids + t for c, t in zip(ctxs, tgts)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), memoir.encoder.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        span = torch.zeros((len(seqs), width), dtype=torch.bool)
        active = torch.zeros((len(seqs), width), dtype=torch.bool)
        tail = torch.zeros((len(seqs), width), dtype=torch.bool)
        answer_at = torch.zeros((len(seqs), width), dtype=torch.bool)
        at_row, at_pos = [], []  # the positions whose next token is a target token
        for i, (s, c) in enumerate(zip(seqs, ctxs)):
            off = width - len(s)
            ids[i, off:] = torch.tensor(s)
            mask[i, off:] = 1
            span[i, off + c.span[0] : off + c.span[1]] = True
            active[i, off + c.span[0] :] = True
            if c.tail is not None:
                tail[i, off + c.tail[0] : off + c.tail[1]] = True
            answer_at[i, off + len(c.ids) - 1] = True
            at_row += [i] * (len(s) - len(c.ids))
            at_pos += range(off + len(c.ids) - 1, off + len(s) - 1)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        routing = BatchRouting(decide=decide, span=span, active=active, centre=memoir.pool_centre,
                          tail=tail if any(c.tail is not None for c in ctxs) else None,
                          texts=[memoir.encoder.span_text(c.ids, c.span) for c in ctxs],
                          span_ids=[c.ids[c.span[0] : c.span[1]] for c in ctxs], answer_at=answer_at)
        with memoir.layer.use(routing):
            hidden = backbone(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev),
                              use_cache=False).last_hidden_state
        # the LM head only where a target token is read: a fifth of the model's work at every
        # other position for a 49k vocabulary
        logprobs = head(hidden[torch.tensor(at_row), torch.tensor(at_pos)]).float().log_softmax(-1)
        gold = torch.tensor([tok for t in tgts for tok in t], device=logprobs.device)
        picked = logprobs.gather(1, gold[:, None])[:, 0]
        argmax = logprobs.argmax(-1).tolist()
        at = 0
        for i, t in zip(rows, tgts):
            preds[i] = argmax[at : at + len(t)]
            nlls[i] = float(-picked[at : at + len(t)].mean())
            at += len(t)
        for i, d in zip(rows, routing.decisions):
            decisions[i] = d
    return Scored(preds, nlls, decisions)


def token_accuracy(pred: list[int], target: list[int]) -> float:
    return sum(p == t for p, t in zip(pred, target)) / max(1, len(target))


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


@dataclass
class EvalSet:
    """The fixed inputs of an evaluation: encoded prompts, targets, and the base model's locality answers."""

    cases: list[Case]
    prompts: list[Encoded]
    rephrases: list[Encoded]
    rephrase_case: list[int]
    targets: list[list[int]]
    loc: list[Encoded]
    loc_targets: list[list[int]]
    loc_case: list[int]
    loc_base: list[list[int] | None] = field(default_factory=list)  # None: a case no point scores
    rephrase_texts: list[str] = field(default_factory=list)


def make_eval_set(memoir: Memoir, cases: list[Case], scored: set[int] | None = None) -> EvalSet:
    """scored: the cases some point will score (None: all). The base model's locality answers are
    read for those alone: on 10,000 CounterFact cases scored by samples of 500 that is half the
    prompts, and the stream's first edit waits for them."""
    enc = memoir.encoder
    rephrases, rephrase_case, loc, loc_targets, loc_case = [], [], [], [], []
    for i, c in enumerate(cases):
        for r in c.rephrases:
            rephrases.append(enc.plain(r))
            rephrase_case.append(i)
        if c.loc_prompt and c.loc_answer:
            loc.append(enc.plain(c.loc_prompt))
            loc_targets.append(enc.target(c.loc_answer))
            loc_case.append(i)
    evalset = EvalSet(cases, [enc.plain(c.prompt) for c in cases], rephrases, rephrase_case,
                  [enc.target(c.target) for c in cases], loc, loc_targets, loc_case)
    wanted = [j for j, i in enumerate(loc_case) if scored is None or i in scored]
    base = teacher_forced(memoir, [loc[j] for j in wanted], [loc_targets[j] for j in wanted], memory=False)
    evalset.loc_base = [None] * len(loc)
    for j, prediction in zip(wanted, base.predictions):
        evalset.loc_base[j] = prediction
    evalset.rephrase_texts = [r for c in cases for r in c.rephrases]
    return evalset


def spread(n: int, sample: int | None) -> list[int]:
    """`sample` indices spaced evenly over range(n) (all of them when n <= sample): a checkpoint
    that scores a sample still sees the stream's first edits as well as its newest."""
    if sample is None or n <= sample:
        return list(range(n))
    if sample < 2:
        raise ValueError(f"a sample spread over a stream needs 2 or more cases, got {sample}")
    return sorted({(j * (n - 1)) // (sample - 1) for j in range(sample)})


def score(memoir: Memoir, evalset: EvalSet, upto: int | None = None, greedy: bool = False,
          edit_ids: list[str] | None = None, sample: int | None = None) -> dict[str, float]:
    """Metrics over the first `upto` cases on the model as it is now, or over `sample` of them
    spread evenly (the routing figures still know every stored edit's subject)."""
    n = len(evalset.cases) if upto is None else upto
    idx = spread(n, sample)
    chosen = set(idx)
    tg = evalset.targets
    rel = teacher_forced(memoir, [evalset.prompts[i] for i in idx], [tg[i] for i in idx])
    sel = [j for j, i in enumerate(evalset.rephrase_case) if i in chosen]
    gen = teacher_forced(memoir, [evalset.rephrases[j] for j in sel],
                         [tg[evalset.rephrase_case[j]] for j in sel])
    lsel = [j for j, i in enumerate(evalset.loc_case) if i in chosen]
    loc = teacher_forced(memoir, [evalset.loc[j] for j in lsel], [evalset.loc_targets[j] for j in lsel])
    out = {
        "scored_cases": len(idx),
        "reliability": _mean(token_accuracy(p, tg[i]) for p, i in zip(rel.predictions, idx)),
        "generalization": _mean(token_accuracy(p, tg[evalset.rephrase_case[j]])
                                for p, j in zip(gen.predictions, sel)),
        "locality": _mean(token_accuracy(p, evalset.loc_base[j]) for p, j in zip(loc.predictions, lsel)),
        "target_perplexity": _mean(math.exp(v) for v in rel.nll),
        # the mean is the paper's figure, but past 1,000 CounterFact edits a few edits that never
        # converged put it in the thousands; the median says what a typical edit's target costs
        "target_perplexity_median": statistics.median(math.exp(v) for v in rel.nll) if rel.nll else float("nan"),
        "false_activation_rate": _mean(d.route is not None for d in loc.decisions),
    }
    if edit_ids is not None:
        own = [edit_ids[evalset.rephrase_case[j]] for j in sel]
        subjects = {eid: evalset.cases[i].subject for i, eid in enumerate(edit_ids[:n])}
        routed = [d.best_edit_id if d.route is not None else None for d in gen.decisions]
        out["routing_accuracy"] = _mean(r == o for r, o in zip(routed, own))
        out["routing_accuracy_subject"] = _mean(
            r is not None and subjects.get(r) == subjects.get(o) for r, o in zip(routed, own)
        )
        out["rephrase_activation_rate"] = _mean(r is not None for r in routed)
        # where no other stored edit is about the same subject, the paraphrase has one right edit;
        # elsewhere data sets hold several (ZsRE: the same question with different answers)
        per_subject = Counter(subjects.values())
        out["routing_accuracy_unique"] = _mean(
            r == o for r, o in zip(routed, own) if subjects.get(o) is not None and per_subject[subjects[o]] == 1)
    if greedy:
        cases = [evalset.cases[i] for i in idx]
        para_cases = [evalset.cases[evalset.rephrase_case[j]] for j in sel]
        out["greedy_reliability"] = _greedy(memoir, [evalset.prompts[i] for i in idx], cases)
        out["greedy_generalization"] = _greedy(memoir, [evalset.rephrases[j] for j in sel], para_cases)
        if memoir.encoder.has_chat:  # the same questions asked through the chat template
            chat = lambda text: memoir.encoder.chat([{"role": "user", "content": text}])  # noqa: E731
            out["chat_reliability"] = _greedy(memoir, [chat(c.prompt) for c in cases], cases)
            out["chat_generalization"] = _greedy(
                memoir, [chat(evalset.rephrase_texts[j]) for j in sel], para_cases)
    return out


def _greedy(memoir: Memoir, prompts: list[Encoded], cases: list[Case]) -> float:
    """Share of prompts whose greedy continuation begins with the target."""
    if not prompts:
        return float("nan")
    lengths = [len(memoir.encoder.target(c.target)) for c in cases]
    # Each prompt decodes a few tokens past its own target (room for the model spelling it in
    # other tokens), not to the longest target of the set: hallucination targets run to 128
    # tokens while most are far shorter. Prompts of similar length share a batch (less padding).
    limit = max(lengths) + 1
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    params = [SamplingParams(max_new_tokens=min(limit, lengths[i] + 4)) for i in order]
    seqs = memoir.generate([prompts[i] for i in order], params)
    texts = [""] * len(prompts)
    for i, s in zip(order, seqs):
        texts[i] = s.text
    return _mean(" ".join(t.split()).startswith(" ".join(c.target.split())) for t, c in zip(texts, cases))


RECENT = 100  # edits behind each checkpoint's edit-time figures


@dataclass
class StreamResult:
    metrics: dict[str, float]
    checkpoints: list[dict[str, float]]
    edits: list[dict]


def check_cases(memoir: Memoir, cases: list[Case]) -> None:
    """Refuse a stream with a case the memory would refuse, before any edit: a long stream
    should not stop at its 200th edit over a limit one setting lifts."""
    bad = []
    for i, case in enumerate(cases):
        try:
            memoir.validate(case.prompt, case.target)
        except InvalidRequestError as e:
            bad.append(f"case {i} ({case.case_id}): {e}")
    if bad:
        raise InvalidRequestError(
            f"{len(bad)} of {len(cases)} cases exceed the memory's limits (raise max_prompt_tokens or "
            f"max_target_tokens, e.g. --set max_target_tokens=128); first: {bad[0]}")


def run_stream(memoir: Memoir, cases: list[Case], *, checkpoints: int = 10, greedy_checkpoints: bool = False,
               checkpoint_sample: int | None = None, final_sample: int | None = None,
               infer_subjects: bool = False, progress: Callable[[int, dict], None] | None = None,
               on_checkpoint: Callable[[list[dict]], None] | None = None) -> StreamResult:
    """Apply the cases as sequential edits, scoring the edits so far at evenly spaced checkpoints
    (`on_checkpoint` gets the curve so far after each, so a long run can be watched and saved).
    infer_subjects: edit without the data set's subjects, as an operator who sends none would
    (the memory infers them); the routing figures still read the given ones.
    A checkpoint scores every edit so far, or `checkpoint_sample` of them: scoring all of them at
    each of 20 checkpoints of a 2,000-edit stream costs ten times the final scoring. The final
    point scores every edit, or `final_sample` of them (on a 10,000-edit stream the greedy and
    chat checks of every edit would take longer than the edits).
    Each point also carries the median time and steps of the `RECENT` edits before it, so a
    long stream shows how edit cost moves as the bank fills."""
    for name, value in (("checkpoint_sample", checkpoint_sample), ("final_sample", final_sample)):
        if value is not None and value < 2:
            raise InvalidRequestError(f"{name} must be 2 or more, got {value}")
    check_cases(memoir, cases)
    marks = sorted({max(1, round(len(cases) * (i + 1) / checkpoints)) for i in range(checkpoints)}) if checkpoints else []
    scored = set(spread(len(cases), final_sample)).union(
        *(spread(m, checkpoint_sample) for m in marks if m < len(cases)))
    evalset = make_eval_set(memoir, cases, scored)
    ids, stats, curve = [], [], []
    successor: dict[str, str] = {}  # superseded edit -> the edit that replaced it

    settle = memoir.config.settle_ratio * memoir.config.stop_loss

    def unlearnt(stats: list[dict]) -> int:
        # edits so far whose training ended above the loss that would have let it stop: past
        # about 1,000 CounterFact edits the key guard leaves a growing share of them
        return sum(s["loss"] > settle for s in stats)

    def recent(stats: list[dict]) -> dict[str, float]:
        window = stats[-RECENT:]
        return {"recent_edit_seconds_median": statistics.median(s["seconds"] for s in window),
                "recent_steps_median": statistics.median(s["steps"] for s in window),
                "recent_unlearnt": unlearnt(window)}

    def live(eid: str) -> str:
        while eid in successor:
            eid = successor[eid]
        return eid
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        rec = memoir.edit(case.prompt, case.target, subject=None if infer_subjects else case.subject,
                          edit_id=f"case-{case.case_id}-{i}")
        if rec.supersedes:
            successor[rec.supersedes] = rec.id
        ids.append(rec.id)
        stats.append({"id": rec.id, "steps": rec.steps, "loss": rec.final_loss, "seconds": time.perf_counter() - t0,
                      "best_overlap": rec.best_overlap, "supersedes": rec.supersedes})
        if progress:
            progress(i + 1, stats[-1])
        if i + 1 in marks and i + 1 < len(cases):
            point = score(memoir, evalset, upto=i + 1, greedy=greedy_checkpoints,
                          edit_ids=[live(e) for e in ids], sample=checkpoint_sample)
            curve.append({"edits": i + 1, **point, "unlearnt": unlearnt(stats), **recent(stats)})
            if on_checkpoint:
                on_checkpoint(curve)
    final = score(memoir, evalset, greedy=True, edit_ids=[live(e) for e in ids], sample=final_sample)
    final["unlearnt"] = unlearnt(stats)
    curve.append({"edits": len(cases), **final, **recent(stats)})
    secs = sorted(s["seconds"] for s in stats)
    final.update({
        "edits": len(cases),
        "edit_seconds_median": statistics.median(secs),
        "edit_seconds_p90": secs[min(len(secs) - 1, int(0.9 * len(secs)))],
        "steps_median": statistics.median(s["steps"] for s in stats),
        "superseded": sum(s["supersedes"] is not None for s in stats),
    })
    return StreamResult(final, curve, stats)
