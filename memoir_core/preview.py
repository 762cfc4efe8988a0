"""Preview of an edit before it is committed: its answers and its blast radius.

A trained but uncommitted edit (an EditProposal) is tried on a scratch copy of the memory
(Memory.trial), so once `trial()` ends the memory is the same bit for bit (version, bank, W_m,
registry). Nothing is written to any store.

The blast radius is how many background (unrelated) texts would switch the memory on with
this edit: their best match after the edit would be the edit itself, at an overlap >= tau that
also stands out from the other stored masks (config.min_gap).
It depends only on masks, so it is cheap enough to check before every committed edit.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import numpy as np

from .errors import EditRejectedError, InvalidRequestError
from .generate import SamplingParams
from .maskbank import MaskBank
from .memoir import EditProposal, Memoir, background_texts
from .neighbours import COUNTED, neighbour_prompts


@dataclass
class Answer:
    prompt: str
    kind: str  # "prompt" or "paraphrase"
    before: str
    after: str
    fired: bool  # after the edit, the memory is on with this edit
    overlap: float  # this prompt's overlap with the edit's masks


@dataclass
class Probe:
    """A background text the edit would switch the memory on for."""

    text: str
    overlap: float
    before: str = ""
    after: str = ""

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class NeighbourProbe(Probe):
    """A prompt near the edit (neighbours.py) and what the edit would do to it."""

    kind: str = "given"  # "other subject", "same subject" or "given"
    fired: bool = False  # after the edit, the memory is on with this edit
    edit_id: str | None = None  # the edit the memory would be on with after the edit (None: off)

    @property
    def counted(self) -> bool:
        return self.fired and self.kind in COUNTED


@dataclass
class BlastRadius:
    count: int  # background texts, and counted neighbours (neighbours.COUNTED), the edit would switch on
    total: int  # background texts probed
    probes: list[Probe] = field(default_factory=list)
    neighbours: list[NeighbourProbe] = field(default_factory=list)


@dataclass
class Preview:
    proposal: EditProposal
    answers: list[Answer]
    blast: BlastRadius
    version: int  # the memory version, unchanged


class Probes:
    """The background texts and their masks (computed once: the base model and basis are fixed)."""

    def __init__(self, texts: Seq[str] | None = None):
        self.texts = list(texts) if texts is not None else background_texts()
        self._masks: np.ndarray | None = None

    def masks(self, memoir: Memoir) -> np.ndarray:
        if self._masks is None:
            encoded = [memoir.encoder.plain(t) for t in self.texts]
            self._masks = memoir.masks(encoded).numpy() if encoded else np.zeros((0, memoir.config.k), np.int64)
        return self._masks


def _edit_bank(memoir: Memoir, record) -> MaskBank:
    bank = MaskBank(memoir.width, memoir.config.k, capacity=1 + len(record.keys))
    bank.add(record.id, np.concatenate([record.route_mask[None], np.asarray(record.keys, dtype=np.int64)
                                        .reshape(-1, memoir.config.k)]))
    return bank


def _counts(memoir: Memoir, record, masks: np.ndarray) -> np.ndarray:
    """Overlap counts [n, slots] of each mask with the edit's mask (slot 0) and routing keys."""
    bank = _edit_bank(memoir, record)
    if not len(masks):
        return np.zeros((0, len(bank)))
    return np.stack([bank.counts(m) for m in masks]).astype(np.float64)


def overlaps(memoir: Memoir, record, masks: np.ndarray) -> np.ndarray:
    """Each mask's best overlap with the edit's mask and routing keys, in [0, 1]."""
    return _counts(memoir, record, masks).max(axis=1) / memoir.config.k


def reach(memoir: Memoir, record, masks: np.ndarray) -> list[tuple[int, float]]:
    """The masks (by index) that would route to this edit once it is committed, with their overlap."""
    if not len(masks):
        return []
    replaces = record.supersedes if record.supersedes in memoir.edits else None
    tau = memoir.config.tau_at(len(memoir.edits) + (0 if replaces else 1))
    counts = _counts(memoir, record, masks) / memoir.config.k
    new, route = counts.max(axis=1), counts[:, 0]
    candidates = np.flatnonzero(new >= tau)
    if not len(candidates):
        return []
    found = []
    for i, match in zip(candidates, memoir.best(masks[candidates])):
        # the edit is added after the stored ones, so it wins only by a strictly larger overlap
        wins = match.edit_id is None or match.edit_id == replaces or new[i] > match.overlap
        if wins and _stands_out(memoir, masks[i], float(new[i]), float(route[i])):
            found.append((int(i), float(new[i])))
    return found


def _stands_out(memoir: Memoir, mask: np.ndarray, overlap: float, route: float) -> bool:
    """The gap rule (config.min_gap) once the edit's own mask (overlap `route`) has joined the stored ones."""
    cfg = memoir.config
    if cfg.min_gap <= 0:
        return True
    ranked = np.sort(np.append(memoir.bank.top_overlaps(mask, cfg.gap_rank), route))[::-1]
    return overlap - ranked[cfg.gap_rank - 1] >= cfg.min_gap


def neighbour_probes(memoir: Memoir, proposal: EditProposal, given=()) -> list[NeighbourProbe]:
    """Route the edit's neighbours (neighbours.py) as they would be once it is committed."""
    rec = proposal.record
    found = neighbour_prompts(memoir, rec, given)
    if not found:
        return []
    with trial(memoir, proposal):
        decisions = memoir.route_prompts([n.text for n in found])
    return [NeighbourProbe(n.text, round(d.best_overlap, 6), kind=n.kind,
                           fired=d.route is not None and d.route.edit_id == rec.id,
                           edit_id=d.route.edit_id if d.route is not None else None)
            for n, d in zip(found, decisions)]


def blast_radius(memoir: Memoir, record, probes: Probes, neighbours: Seq[NeighbourProbe] = ()) -> BlastRadius:
    texts = probes.texts
    hits = reach(memoir, record, probes.masks(memoir))
    return BlastRadius(len(hits) + sum(n.counted for n in neighbours), len(texts),
                       [Probe(texts[i], round(ov, 6)) for i, ov in hits], list(neighbours))


def check_blast_radius(memoir: Memoir, proposal: EditProposal, probes: Probes, limit: int | None,
                       limit_name: str = "max_blast_radius", given=()) -> BlastRadius:
    """Raises EditRejectedError when the edit would switch the memory on for more than `limit`
    background texts and neighbours (None: no limit)."""
    rec = proposal.record
    blast = blast_radius(memoir, rec, probes, neighbour_probes(memoir, proposal, given) if limit is not None else ())
    if limit is not None and blast.count > limit:
        shown = "; ".join([repr(p.text[:60]) for p in blast.probes[:3]] +
                          [f"{n.text[:60]!r} ({n.kind})" for n in blast.neighbours if n.counted][:3])
        raise EditRejectedError(
            f"the edit would switch the memory on for {blast.count} prompts it should leave alone: unrelated "
            f"background texts (of {blast.total}) and neighbours (e.g. {shown}); the limit is {limit_name}={limit}. "
            "Make the prompt more specific or give its subject, or preview it with dry_run to see which prompts "
            "it catches")
    return blast


def trial(memoir: Memoir, proposal: EditProposal):
    """Commit the proposal for the length of the block; afterwards the memory is exactly as it was
    (Memory.trial: a scratch copy)."""
    return memoir.memory.trial(proposal.record)


def _greedy(memoir: Memoir, prompts: list[str], max_new_tokens: int) -> list[str]:
    if not prompts:
        return []
    params = SamplingParams(max_new_tokens=max_new_tokens)
    return [s.text for s in memoir.generate(prompts, params)]


def preview(memoir: Memoir, proposal: EditProposal, probes: Probes, *, max_new_tokens: int = 16,
            max_probes: int = 20, given: Seq[str] = ()) -> Preview:
    """Answers before and after the edit (prompt and paraphrases), and its blast radius with the
    answers of up to `max_probes` of the background texts it catches and of its neighbours
    (neighbours.py, `given` among them); the memory is left as it was."""
    rec = proposal.record
    prompts = [rec.prompt, *rec.rephrase_prompts]
    blast = blast_radius(memoir, rec, probes, neighbour_probes(memoir, proposal, given))
    shown = blast.probes[:max_probes]
    texts = prompts + [p.text for p in shown] + [n.text for n in blast.neighbours]
    before = _greedy(memoir, texts, max_new_tokens)
    with trial(memoir, proposal):
        after_seqs = memoir.generate(texts, SamplingParams(max_new_tokens=max_new_tokens))
    after = [s.text for s in after_seqs]
    own = overlaps(memoir, rec, memoir.masks([memoir.encoder.plain(p) for p in prompts]))
    answers = [Answer(p, "prompt" if i == 0 else "paraphrase", before[i], after[i],
                      bool(after_seqs[i].decision and after_seqs[i].decision.route
                           and after_seqs[i].decision.route.edit_id == rec.id), round(float(own[i]), 6))
               for i, p in enumerate(prompts)]
    for j, probe in enumerate([*shown, *blast.neighbours]):
        probe.before, probe.after = before[len(prompts) + j], after[len(prompts) + j]
    return Preview(proposal, answers, blast, memoir.version)


@dataclass
class Tried:
    """One prompt with and without the memory, and the routing decision."""

    prompt: str
    with_memory: str
    without_memory: str
    edit_id: str | None  # the edit that fired (None: memory off)
    best_edit_id: str | None
    overlap: float
    tau: float
    version: int


def try_prompt(memoir: Memoir, prompt: str, max_new_tokens: int = 24) -> Tried:
    n = len(memoir.encoder.plain(prompt).ids)
    if not prompt.strip() or n > memoir.config.max_prompt_tokens:
        raise InvalidRequestError(f"the prompt must be 1 to {memoir.config.max_prompt_tokens} tokens (it is {n})")
    params = SamplingParams(max_new_tokens=max_new_tokens)
    (on,) = memoir.generate([prompt], params)
    (off,) = memoir.generate([prompt], params, memory=False)
    d = on.decision
    fired = d.route.edit_id if d is not None and d.route is not None else None
    return Tried(prompt, on.text, off.text, fired, d.best_edit_id if d else None,
                 round(d.best_overlap, 6) if d else 0.0, round(memoir.tau, 6), memoir.version)
