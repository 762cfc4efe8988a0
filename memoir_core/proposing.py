"""How a Memoir trains an edit without applying it: the edit's rows, its masks and keys, the
stored edits it must keep intact, and the optimisation, into an EditProposal.

A mixin of Memoir (memoir.py), kept apart because proposing reads the memory and never changes
it: Memoir.commit applies a proposal through memorystate.Memory, and dropping one changes nothing.
It uses the Memoir's encoder, basis, hashes, contexts, trainer and memory (banks, weights, edits,
guard).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from .avoid import other_question_masks, other_question_rows
from .editor import TrainOutcome
from .errors import EditConflictError, InvalidRequestError
from .forms import alias_forms, statement_form
from .guard import factor
from .records import EditRecord
from .residual import quantise
from .rows import SHAPE_STEP, collate, edit_rows, neighbour_rows
from .subjects import infer_aliases, infer_subject, name_of, names, subject_words

MAX_ALIASES = 8  # other names per edit: each trains one more row


@dataclass
class EditProposal:
    """A trained edit not yet applied: commit() applies it, dropping it changes nothing."""

    record: EditRecord
    outcome: TrainOutcome
    rows: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _question_rows(rows) -> list[int]:
    """The edit's plain row and, where it has one, its keyed chat row (the one keyed row after a
    cached preamble): where its question is read bare and templated."""
    return [0] + [i for i, r in enumerate(rows) if r.key and r.context][:1]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


class Proposing:
    @property
    def shape_step(self) -> int:
        """The width step of an edit's batches (rows.collate): oneDNN builds its bf16 kernels per
        shape; fp32 products run in MKL, where padding would only add work."""
        return 1 if self.train_dtype == "float32" else SHAPE_STEP

    def validate(self, prompt: str, target: str) -> tuple[str, str]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("prompt must be a non-empty string")
        if not isinstance(target, str) or not target.strip():
            raise InvalidRequestError("target_new must be a non-empty string")
        prompt, target = prompt.strip(), target.strip()
        n = len(self.encoder.plain(prompt).ids)
        if n > self.config.max_prompt_tokens:
            raise InvalidRequestError(f"prompt is {n} tokens; the limit is {self.config.max_prompt_tokens}")
        n = len(self.encoder.target(target))
        if n > self.config.max_target_tokens:
            raise InvalidRequestError(f"target_new is {n} tokens; the limit is {self.config.max_target_tokens}")
        return prompt, target

    def subject_of(self, prompt: str, subject: str | None) -> tuple[str | None, str | None]:
        """The subject an edit routes on, and where it came from ("given", "inferred"; None:
        masks alone route the edit: subject routing is off, or the prompt names nothing)."""
        subject = subject.strip() if isinstance(subject, str) and subject.strip() else None
        if subject is not None:
            if not names(subject_words(subject), prompt, whole=False):
                raise InvalidRequestError(f"the subject {subject!r} is not named in the prompt: an edit routes only "
                                          "for prompts that name its subject")
            return subject, "given" if self.config.subject_routing else None
        if not self.config.subject_routing:
            return None, None
        inferred = infer_subject(prompt)
        return (inferred, "inferred") if inferred else (None, None)

    def aliases_of(self, subject: str | None, aliases) -> tuple[list[str], str | None]:
        """The other names an edit routes on, and where they came from ("given", "inferred").
        None asks for inference (an acronym); an empty list for none."""
        if subject is None:
            if aliases:
                raise InvalidRequestError("aliases need a subject: give `subject` with them")
            return [], None
        if aliases is None:
            inferred = infer_aliases(subject)
            return (inferred, "inferred") if inferred else ([], None)
        if isinstance(aliases, str) or len(aliases) > MAX_ALIASES:
            raise InvalidRequestError(f"aliases must be a list of at most {MAX_ALIASES} names")
        out: list[str] = []
        own = subject_words(subject)
        for alias in aliases:
            name = name_of(alias) if isinstance(alias, str) and len(alias) <= 200 else None
            if name is None:
                raise InvalidRequestError(f"alias {alias!r} is not a name: a few words, up to 200 characters")
            alias = " ".join(alias.split())
            if list(name.words) != own and alias not in out:
                out.append(alias)
        return out, ("given" if out else None)

    def existing(self, edit_id: str, prompt: str, target: str) -> EditRecord | None:
        """The stored edit for an idempotent retry; a reused id with other content is a conflict."""
        rec = self.edits.get(edit_id)
        if rec is None:
            return None
        if (rec.prompt, rec.target_new) != (prompt.strip(), target.strip()):
            raise EditConflictError(f"edit id {edit_id!r} already exists with a different prompt or target")
        return rec

    def propose(self, prompt: str, target: str, *, edit_id: str | None = None, rephrases=(), subject=None,
                aliases=None, metadata=None, author=None,
                deadline: float | None = None) -> Generator[None, None, EditProposal]:
        """Train an edit step by step (a generator: one yield per optimisation step); nothing is applied."""
        t0 = time.perf_counter()
        prompt, target = self.validate(prompt, target)
        rephrases = tuple(p.strip() for p in rephrases or () if p and p.strip())
        for p in rephrases:
            self.validate(p, target)
        edit_id = edit_id or uuid.uuid4().hex[:16]
        subject, subject_source = self.subject_of(prompt, subject)
        aliases, aliases_source = self.aliases_of(subject if subject_source else None, aliases)
        n_prefixes = len(self.basis.prefixes)
        if self.config.prefix_rows is not None:
            n_prefixes = min(n_prefixes, self.config.prefix_rows)
        statement = statement_form(prompt, subject) if self.config.statement_rows else None
        statements = (statement,) if statement is not None and statement not in rephrases else ()
        # Only given aliases train: an inferred acronym is a guess ("Rose Ann Scamardella" -> "RAS"),
        # and its row cost every edit that got one some generalization (docs/routing.md).
        named = alias_forms(prompt, subject, aliases) if self.config.alias_rows and aliases_source == "given" else ()
        rows = edit_rows(self.encoder, self.contexts, prompt, target, n_prefixes, chat=self.config.chat_rows,
                         rephrases=rephrases + tuple(p for p in named if p not in rephrases), statements=statements, after=self.config.continuation_weight > 0)
        # The other questions about the subject ride in the same forward (avoid.py), then are split off.
        asked_rows = other_question_rows(self, prompt, subject) if subject_source else None
        n_own = len(rows)
        merged = self.trainer.prepare(collate(rows + (asked_rows.rows if asked_rows else []), self.contexts,
                                              self.encoder.pad_id, self.device, self.shape_step))
        prepared = merged.first(n_own, self.shape_step) if asked_rows else merged
        # Row 0 is the plain prompt followed by the target: its prompt positions give the mask;
        # the chat row and given paraphrases give extra routing keys.
        keyed = [i for i, r in enumerate(rows) if r.key]
        masks = self.tophash.masks(torch.stack([prepared.features(i, rows[i].key, self.pool_centre) for i in keyed]))
        # With a bf16 training copy (precision.py) a few of the k columns at the margin differ
        # from the served model's: the edit's own prompt then matches its mask at about 0.97,
        # not 1.0. An fp32 mask would cost another 26-block forward (+15% per edit).
        route = masks[0]
        weighted = self.pool_centre is not None  # routes on another mask than the columns it trains
        idx = self.colhash.masks(prepared.features(0, rows[0].key)[None])[0] if weighted else route
        own_keys = self._keys(rows, prepared, idx)
        answer_keys = self._answer_keys(rows, prepared, idx)
        asked = other_question_masks(self, asked_rows, merged, n_own, [(i, rows[i]) for i in _question_rows(rows)])
        del merged
        keys = {tuple(m.tolist()) for m in masks[1:]} - {tuple(route.tolist())}
        match = self.bank.best(route.numpy()[None])[0]
        superseded = self._superseded_by(prompt)
        neighbours = self._neighbours(masks.numpy(), idx if weighted else None, exclude=superseded)
        if neighbours:
            yield
            extra = neighbour_rows(self.encoder, self.contexts, rows[0].tokens, rows[0].target,
                                   [(r.id, r.prompt, r.target_new) for r in neighbours], chat=self.config.chat_rows)
            prepared = prepared.extend(self.trainer.prepare(collate(extra, self.contexts, self.encoder.pad_id,
                                                                    self.device, self.shape_step)))
            rows = rows + extra
        t_prep = time.perf_counter()
        yield
        dev_idx = idx.to(self.device)
        if superseded is not None:
            old = self.edits[superseded]
            start = self.weights.columns_without(dev_idx, old.idx, old.delta)
        else:
            start = self.weights.columns(dev_idx)
        gate, const = self._row_routes(rows, dev_idx, prepared.acts)
        if deadline is None:
            deadline = t0 + self.config.max_edit_seconds
        guard = None
        if len(self.guard):
            # the edit being replaced is not protected: its prompt is this edit's own
            guard = self.guard.restricted(dev_idx, without=self.edits.get(superseded))
        outcome = yield from self.trainer.optimise(prepared, dev_idx, start, self._offset(dev_idx), deadline,
                                                   gate, const, guard)
        delta = quantise(outcome.columns - start)
        other_id, other_overlap = (match.edit_id, match.overlap) if match.edit_id != superseded else (None, 0.0)
        if superseded is not None and len(self.bank) > 1:
            other_id, other_overlap = self._best_other(route, superseded)
        record = EditRecord(
            id=edit_id, prompt=prompt, target_new=target, rephrase_prompts=list(rephrases), subject=subject,
            subject_source=subject_source, aliases=aliases, aliases_source=aliases_source, metadata=dict(metadata or {}), author=author, created_at=time.time(), steps=outcome.steps,
            final_loss=outcome.loss, seconds=time.perf_counter() - t0, best_overlap=other_overlap,
            best_overlap_id=other_id, supersedes=superseded, keys=[list(k) for k in sorted(keys)], avoid=asked.avoid,
            avoid_relation=asked.avoid_relation, own_relation=asked.own_relation,
            learnt=bool(outcome.loss <= self.config.settle_ratio * self.config.stop_loss),
            route=route.tolist() if weighted else None, answer_keys=answer_keys,
            idx=idx.long().cpu(), delta=delta.cpu(), inputs=factor(own_keys),
        )
        return EditProposal(record, outcome, rows=len(rows),
                            timings={"prepare": t_prep - t0, "train": time.perf_counter() - t_prep})

    def _keys(self, rows, prepared, idx: torch.Tensor) -> torch.Tensor:
        """The edit's memory inputs on its own columns at every position of its own rows -> [n, k]."""
        batch = prepared.batch
        valid = batch.attention_mask[:, batch.context_length:].bool()
        own = [i for i, r in enumerate(rows) if r.own and r.route is None and i < valid.shape[0]]
        dev_idx = idx.to(prepared.acts.device)
        x = prepared.acts[own].index_select(-1, dev_idx).float()[valid[own]]
        offset = self._offset(dev_idx)
        return (x if offset is None else x - offset).cpu()

    def _answer_keys(self, rows, prepared, idx: torch.Tensor) -> torch.Tensor:
        """The memory inputs on the edit's columns at the last own token of its plain row and,
        where it has one, of its keyed chat row -> [1 or 2, k]: where the answer's first token is
        read, bare and templated (records.answer_keys)."""
        which = _question_rows(rows)
        at = torch.tensor([len(rows[i].tokens) - 1 for i in which], device=prepared.acts.device)
        picked = prepared.acts[torch.tensor(which, device=at.device), at]
        return picked.index_select(-1, idx.to(at.device)).float().cpu()

    def _neighbours(self, queries: np.ndarray, columns: torch.Tensor | None, exclude: str | None) -> list[EditRecord]:
        """Stored edits whose masks or keys overlap this edit's mask or keys enough to be confused
        with it, or whose columns this edit's update lands on most (co-training). The chat keys
        matter most: the chat template makes chat forms of different questions look alike, so
        their answers interfere first. `columns`: the columns this edit trains where they are not
        its routing mask (config pool="norm"); routing masks then find other edits than columns do."""
        limit = self.config.max_neighbours
        if not limit or not len(self.bank):
            return []
        threshold = self.config.neighbour_overlap if self.config.neighbour_overlap is not None else self.config.tau
        best: dict[str, int] = {}
        for bank in (self.bank, self.keybank):
            if not len(bank):
                continue
            ids = bank.ids
            for q in queries:
                counts = bank.counts(q).astype(np.int64)
                for i in np.argsort(-counts)[: limit + 2]:
                    if counts[i] > best.get(ids[i], -1):
                        best[ids[i]] = int(counts[i])
        if columns is not None and self.config.neighbour_columns:
            for edit_id, count in self.guard.sharing(columns, limit + 2):
                best[edit_id] = max(count, best.get(edit_id, -1))
        found = sorted((e for e, c in best.items() if c / self.config.k >= threshold and e != exclude),
                       key=lambda e: (-best[e], e))
        return [self.edits[e] for e in found[:limit]]

    def _row_routes(self, rows, idx: torch.Tensor, acts: torch.Tensor):
        if all(r.route is None for r in rows):
            return None, None
        gate = torch.ones(len(rows), idx.numel(), device=acts.device)
        const = torch.zeros(acts.shape[0], acts.shape[1], self.d_out, device=acts.device)
        for i, r in enumerate(rows):
            if r.route is None:
                continue
            other = self.edits[r.route].idx.to(idx.device)
            gate[i] = torch.isin(idx, other).float()
            private = other[~torch.isin(other, idx)]
            if private.numel():
                picked = acts[i].index_select(-1, private).float()
                offset = self._offset(private)
                if offset is not None:
                    picked = picked - offset
                const[i] = picked @ self.weights.columns(private).T
        return gate, const

    def _superseded_by(self, prompt: str) -> str | None:
        """The stored edit of the same prompt (case and spacing aside): the new answer replaces it.
        Only the same text: two different prompts can have identical masks (one word apart on a
        small model), and replacing on that would silently drop an acknowledged edit."""
        key = _normalise(prompt)
        for rec in self.edits.values():
            if _normalise(rec.prompt) == key:
                return rec.id
        return None

    def _best_other(self, idx: torch.Tensor, exclude: str) -> tuple[str | None, float]:
        counts = self.bank.counts(idx.numpy())
        ids = self.bank.ids
        for i in np.argsort(-counts.astype(np.int64))[:2]:
            if ids[i] != exclude:
                return ids[i], float(counts[i]) / self.config.k
        return None, 0.0
