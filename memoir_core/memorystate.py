"""Memory: the edited state of a Memoir, and the only code that changes it.

It holds W_m (`residual.py`), the mask bank (each edit's routing mask), the key bank (extra
routing keys), the registry (edit id -> EditRecord, in apply order), the version, the key guard's
per-edit factors, the subject index and the route cache. Every change goes through a method
here: commit and remove (a new version each), apply (a stored edit, no new version), follow (a
logged edit at the version the log gives), restore and reset (a whole stored memory), trial (a
scratch copy for a dry run). Other modules read the fields; none assigns to them (a test checks).

Invariants, kept by every method:
  - W_m is the exact sum of the live edits' quantised deltas (residual.py), so removing an
    edit restores the bits it found, and two memories that applied the same edits in the same
    order are bit-identical (digest());
  - the mask bank, the guard and the registry hold the same edits; the key bank those with keys;
  - the route cache and subject index never outlive a change they depend on.
Like the Memoir, it is not thread-safe: the thread that owns the Memoir calls it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .errors import EditConflictError, EditNotFoundError, StateError
from .guard import KeyGuard
from .maskbank import MaskBank, pack
from .memory_layer import Route
from .records import EditRecord
from .residual import ResidualWeights
from .subjects import SubjectIndex

ROUTE_CACHE_BYTES = 1 << 30  # the frozen columns of recently routed edits kept between requests

Offset = Callable[[torch.Tensor], "torch.Tensor | None"]


class MemoryField:
    """One of a Memory's fields, read through the object that holds the Memory (`.memory`), as
    the Memoir does; assigning to it there is an error: the Memory's methods change it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, holder, owner=None):
        return self if holder is None else getattr(holder.memory, self.name)

    def __set__(self, holder, value) -> None:
        raise AttributeError(f"{self.name} belongs to the Memory (memorystate.py): change it through its methods")


class Memory:
    def __init__(self, width: int, d_out: int, k: int, device: torch.device | str, *, guard: bool = True):
        self.width, self.d_out, self.k, self.device = width, d_out, k, device
        self.guarded = guard  # the key guard keeps factors (config.protect > 0)
        self.weights = ResidualWeights(d_out, width, device)
        self.bank = MaskBank(width, k)  # each edit's mask: the columns it trains
        self.keybank = MaskBank(width, k)  # extra routing keys (chat form, paraphrases)
        self.edits: dict[str, EditRecord] = {}
        self.version = 0
        self.guard = KeyGuard(width, k, enabled=guard)
        self.routes: dict[str, Route] = {}
        self._subjects: SubjectIndex | None = None

    # -- reads --------------------------------------------------------------------------------
    @property
    def subjects(self) -> SubjectIndex:
        """The live edits' subjects, filed for routing (rebuilt when the registry was replaced)."""
        index = self._subjects
        if index is None or index.source is not self.edits or index.size != len(self.edits):
            index = self._subjects = SubjectIndex.of(self.edits)
        return index

    def route(self, edit_id: str, offset: Offset, answer_key: bool = True) -> Route:
        """The edit's columns frozen at this version, from the cache of recently routed edits;
        with its answer keys (centred as the inputs are) where it has them and answer_key is on."""
        route = self.routes.pop(edit_id, None)
        if route is not None and (route.key is not None) != (answer_key and self.edits[edit_id].answer_keys.size > 0):
            route = None  # cached under the other setting
        if route is None:
            rec = self.edits[edit_id]
            idx = rec.idx.to(self.device)
            cols = self.weights.columns(idx).T.contiguous()
            centre = offset(idx)
            key = None
            if rec.answer_keys.size:
                key = torch.from_numpy(rec.answer_keys.astype(np.float32)).to(self.device)
                key = key if centre is None else key - centre
            route = Route(edit_id, self.version, idx, cols, centre, rec.target_new,
                          key=key if answer_key else None)
        self.routes[edit_id] = route  # the most recently used last
        # A route holds k x d_out fp32 columns: 1 MB on the default model, 64 MB on an 8B one,
        # where a cache of every edit ever routed to would fill a GPU. The least recently used
        # go first; sequences still running keep theirs.
        limit = max(1, ROUTE_CACHE_BYTES // max(1, route.cols.nbytes))
        while len(self.routes) > limit:
            del self.routes[next(iter(self.routes))]
        return route

    def digest(self) -> dict:
        """sha256 of W_m's exact accumulator and of the mask banks (slot order and bits), with the
        version and the edit ids in apply order: equal digests mean bit-identical memories."""
        acc = self.weights.acc.detach().cpu().contiguous().numpy()
        ids, bits = self.bank.export()
        kids, kbits = self.keybank.export()
        bank = hashlib.sha256()
        for part in (repr(ids).encode(), np.ascontiguousarray(bits).tobytes(), repr(kids).encode(),
                     np.ascontiguousarray(kbits).tobytes()):
            bank.update(part)
        return {"version": self.version, "edits": list(self.edits),
                "w_m_sha256": hashlib.sha256(acc.tobytes()).hexdigest(), "bank_sha256": bank.hexdigest(),
                "bank_order": ids}

    # -- one edit -----------------------------------------------------------------------------
    def commit(self, rec: EditRecord) -> EditRecord:
        """A trained edit joins: the one it supersedes leaves, the version moves on (rec.version set)."""
        if rec.id in self.edits:
            raise EditConflictError(f"edit id {rec.id!r} already exists")
        if rec.supersedes is not None and rec.supersedes in self.edits:
            self._unapply(self.edits[rec.supersedes])
            del self.edits[rec.supersedes]
        self.version += 1
        rec.version = self.version
        self.apply(rec)
        return rec

    def follow(self, rec: EditRecord, version: int) -> None:
        """A logged edit that makes `version` (a follower replaying the shared log)."""
        if rec.supersedes is not None and rec.supersedes in self.edits:
            self._unapply(self.edits.pop(rec.supersedes))
        if rec.id in self.edits:
            raise StateError(f"log entry {version} adds edit {rec.id!r}, which is already live")
        self.apply(rec)
        self.version = version

    def apply(self, rec: EditRecord) -> None:
        """Add a stored edit (replay): no training, no version change."""
        self.weights.add(rec.idx.to(self.device), rec.delta)
        self.bank.add(rec.id, rec.route_mask)
        if rec.keys:
            self.keybank.add(rec.id, np.asarray(rec.keys))
        self.edits[rec.id] = rec
        index = self._subjects
        if index is not None and index.source is self.edits and index.size == len(self.edits) - 1:
            index.add(rec)  # kept in step; otherwise rebuilt when next asked for
        self.guard.add(rec)
        self.routes.clear()

    def remove(self, edit_id: str) -> EditRecord:
        """Roll one edit back: its delta leaves W_m exactly, its mask the bank; the version moves on."""
        rec = self.edits.get(edit_id)
        if rec is None:
            raise EditNotFoundError(f"no edit with id {edit_id!r}")
        self._unapply(rec)
        del self.edits[edit_id]
        self.version += 1
        return rec

    def _unapply(self, rec: EditRecord) -> None:
        """Undo apply() for a record about to leave self.edits."""
        # read from the store first: a damaged state file (StateCorruptError) changes nothing
        delta, inputs = rec.delta, rec.inputs
        index = self._subjects
        if index is not None and index.source is self.edits and index.size == len(self.edits) + 1:
            index.remove(rec)
        self.guard.remove(rec, inputs)
        self.weights.subtract(rec.idx.to(self.device), delta)
        self.bank.remove(rec.id)
        if rec.id in self.keybank:
            # Its keys leave without a swap-remove: the others keep their apply order, which then
            # depends only on the live edits, so a memory restored from a log or snapshot (and
            # every replica) breaks overlap ties among routing keys exactly as this one does.
            ids, bits = self.keybank.export()
            keep = [i for i, e in enumerate(ids) if e != rec.id]
            self.keybank = MaskBank.restore(self.width, self.k, [ids[i] for i in keep], bits[keep])
        self.routes.clear()

    # -- the whole memory ---------------------------------------------------------------------
    def rebuild_guard(self) -> None:
        """The key guard from the live edits' stored inputs (after a restore that skipped apply)."""
        self.guard = KeyGuard(self.width, self.k, enabled=self.guarded)
        self.guard.add_all(self.edits.values())

    def restore(self, edits: list[EditRecord], version: int, acc: torch.Tensor | None = None,
                bank_order: list[str] | None = None) -> None:
        """Take a stored memory into an empty one: the live edits in apply order and, when the
        store has them, W_m's accumulator and the bank's slot order (ties break by it)."""
        if self.edits or self.version:
            raise ValueError("restore needs an empty memory")
        if acc is None:
            for rec in edits:
                self.apply(rec)
        else:
            self.weights.load(acc.to(self.device))
            self.edits = {rec.id: rec for rec in edits}
            self.rebuild_guard()
        if bank_order is not None or acc is not None:
            order = bank_order if bank_order is not None else [r.id for r in edits]
            masks = np.stack([self.edits[e].route_mask for e in order]) if order else []
            self.bank = MaskBank.restore(self.width, self.k, order, pack(masks, self.width)) if order \
                else MaskBank(self.width, self.k)
            self.keybank = MaskBank(self.width, self.k)
            for rec in edits:
                if rec.keys:
                    self.keybank.add(rec.id, np.asarray(rec.keys))
        self.routes.clear()
        self.version = version

    def reset(self) -> None:
        """Empty: no edit, version 0, W_m zero."""
        self.weights.acc.zero_()
        self.weights.weight.zero_()
        self.edits = {}
        self.rebuild_guard()
        self.version = 0
        self.bank = MaskBank(self.width, self.k)
        self.keybank = MaskBank(self.width, self.k)
        self.routes.clear()

    def load_bank(self, ids: list[str], masks: np.ndarray, edits: dict[str, EditRecord],
                  acc: torch.Tensor | None = None) -> None:
        """Replace the registry and mask bank wholesale with synthetic ones (benchmarks: a bank of
        thousands of edits without training them), and W_m by `acc` if given; the version moves on.
        The live edits' deltas need not sum to W_m here: such a memory is for routing, not removal."""
        if acc is not None:
            self.weights.load(acc)
        self.bank = MaskBank.restore(self.width, self.k, ids, pack(masks, self.width))
        self.keybank = MaskBank(self.width, self.k)
        self.edits = dict(edits)
        self.version += 1
        self.routes.clear()

    @contextmanager
    def trial(self, rec: EditRecord) -> Iterator[None]:
        """Commit `rec` for the length of the block on a scratch copy of the registry, banks, guard
        and route cache; the W_m columns it touches are saved and written back. Afterwards the
        memory (version, banks, W_m, registry, rec.version) is exactly as it was."""
        saved = (self.version, self.edits, self.bank, self.keybank, self.routes, self.guard)
        saved_version = rec.version
        cols = rec.idx
        if rec.supersedes in self.edits:
            cols = torch.cat([cols, self.edits[rec.supersedes].idx])
        weights = self.weights
        cols = torch.unique(cols).to(weights.acc.device)
        acc, weight = weights.acc.index_select(1, cols), weights.weight.index_select(1, cols)
        self.edits = dict(self.edits)
        self.bank = MaskBank.restore(self.bank.width, self.bank.k, *self.bank.export())
        self.keybank = MaskBank.restore(self.keybank.width, self.keybank.k, *self.keybank.export())
        self.routes = {}
        self.guard = self.guard.copy()
        try:
            self.commit(rec)
            yield
        finally:
            weights.acc.index_copy_(1, cols, acc)
            weights.weight.index_copy_(1, cols, weight)
            self.version, self.edits, self.bank, self.keybank, self.routes, self.guard = saved
            rec.version = saved_version
