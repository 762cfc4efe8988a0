"""The live edits as the log describes them: what replay and the writer both keep.

One class checks every record the same way whether it comes from the engine (a refusal is
a programming error: ValueError) or from disk at start-up (the reader turns the same
RegistryError into StateCorruptError with the record's location).
"""

from __future__ import annotations

import numpy as np
import torch

from ..records import BITSETS, EditRecord


class Accumulator:
    """W_m's exact int64 accumulator while edits are summed (start-up, snapshots).

    Kept transposed, [D, d_out], so an edit's k columns are k contiguous rows: adding one is a
    row gather (~1 ms at d_out 576, k 440) instead of a strided column gather (~10x slower).
    numpy, single-threaded: torch's parallel kernels spin on a busy machine and would take
    cores from generation while a snapshot runs in the background.
    """

    def __init__(self, d_out: int, width: int, initial: torch.Tensor | None = None):
        self._t = np.zeros((width, d_out), np.int64) if initial is None else np.ascontiguousarray(initial.numpy().T)

    def add(self, idx: torch.Tensor, delta: torch.Tensor, sign: int = 1) -> None:
        """acc[:, idx] += sign * delta, exactly (idx is sorted and distinct)."""
        i, d = idx.cpu().numpy(), delta.cpu().numpy().T
        if sign > 0:
            self._t[i] += d
        else:
            self._t[i] -= d

    def tensor(self) -> torch.Tensor:
        """[d_out, D] int64."""
        return torch.from_numpy(np.ascontiguousarray(self._t.T))


class RegistryError(ValueError):
    pass


class Registry:
    """Live edits in apply order, the mask bank's slot order, the version; optionally W_m's accumulator.

    The bank order mirrors MaskBank's swap-remove, so a restored bank breaks overlap ties
    exactly as the running one did.
    """

    def __init__(self, k: int, d_out: int, width: int, version: int = 0, acc: Accumulator | None = None):
        self.k, self.d_out, self.width = k, d_out, width
        self.live: dict[str, EditRecord] = {}
        self.order: list[str] = []
        self._slot: dict[str, int] = {}
        self.version = version
        self.acc = acc  # W_m's accumulator, when tracked (start-up only)

    def check(self, rec: EditRecord) -> None:
        """Shapes, dtypes and range of a record's tensors (garbage in W_m is worse than a refusal)."""
        # delta and inputs may be on disk (store/ondisk.py): their shape and dtype are checked
        # without reading them; their bytes were checked when the handle was made
        idx, delta = rec.idx, rec.stored("delta")
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or tuple(idx.shape) != (self.k,):
            raise RegistryError(f"edit {rec.id!r}: idx must be int64 [{self.k}]")
        if delta is None or delta.dtype != torch.int32 or tuple(delta.shape) != (self.d_out, self.k):
            raise RegistryError(f"edit {rec.id!r}: delta must be int32 [{self.d_out}, {self.k}]")
        inputs = rec.stored("inputs")
        if inputs is not None and (inputs.dtype != torch.float16 or len(inputs.shape) != 2
                                   or inputs.shape[1] != self.k
                                   or isinstance(inputs, torch.Tensor) and not bool(torch.isfinite(inputs).all())):
            raise RegistryError(f"edit {rec.id!r}: inputs must be finite float16 [r, {self.k}]")
        for name, mask in (("idx", idx), ("route", rec.route)):
            if mask is None:
                continue
            if name == "route" and (not isinstance(mask, np.ndarray) or mask.dtype.kind not in "iu"
                                    or mask.shape != (self.k,)):
                raise RegistryError(f"edit {rec.id!r}: route must be a list of {self.k} column indices")
            m = torch.as_tensor(mask.astype(np.int64) if isinstance(mask, np.ndarray) else mask)
            if self.k and (int(m.min()) < 0 or int(m.max()) >= self.width or not bool((m[1:] > m[:-1]).all())):
                raise RegistryError(f"edit {rec.id!r}: {name} must be sorted, distinct and within 0..{self.width - 1}")

        keys = rec.answer_keys
        if keys.size and (keys.ndim != 2 or not 1 <= keys.shape[0] <= 2 or keys.shape[1] != self.k
                          or not np.isfinite(keys).all()):
            raise RegistryError(f"edit {rec.id!r}: answer_keys must be finite float16 [1 or 2, {self.k}]")
        for name in BITSETS:
            packed = getattr(rec, name)
            if len(packed) and not self._columns_fit(packed):
                raise RegistryError(f"edit {rec.id!r}: {name} must hold masks of {self.k} columns within 0..{self.width - 1}")
        made = len(rec.avoid_relation) or len(rec.own_relation)  # relation masks come together or not at all
        if made and (len(rec.avoid_relation) != len(rec.avoid) or not len(rec.own_relation)):
            raise RegistryError(f"edit {rec.id!r}: avoid_relation must hold one mask per avoid mask, with own_relation")

    def _columns_fit(self, packed: np.ndarray) -> bool:
        """Whether bitsets (bitmasks.py) hold k columns each, all below width."""
        words = -(-self.width // 64)
        if packed.dtype != np.uint64 or packed.ndim != 2 or packed.shape[1] > words:
            return False
        if packed.shape[1] == words and self.width % 64:
            past = np.uint64(((1 << 64) - 1) ^ ((1 << (self.width % 64)) - 1))
            if np.any(packed[:, -1] & past):
                return False
        return bool(np.all(np.bitwise_count(packed).sum(axis=1) == self.k))

    def put(self, records: list[EditRecord], order: list[str], version: int) -> None:
        """Start from a snapshot's live set."""
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise RegistryError("two live edits share one id")
        if sorted(order) != sorted(ids):
            raise RegistryError("the bank order does not list exactly the live edits")
        for rec in records:
            self.check(rec)
        self.live = {r.id: r for r in records}
        self.order = list(order)
        self._slot = {e: i for i, e in enumerate(order)}
        self.version = version

    def expect(self, version: int) -> None:
        if version != self.version + 1:
            raise RegistryError(f"version {version} does not follow {self.version}")

    def add(self, rec: EditRecord) -> None:
        """An edit record: version +1, its superseded edit (if live) out, the edit in."""
        self.check_add(rec)
        if rec.supersedes is not None and rec.supersedes in self.live:
            self._drop(rec.supersedes)
        self.live[rec.id] = rec
        self._slot[rec.id] = len(self.order)
        self.order.append(rec.id)
        if self.acc is not None:
            self.acc.add(rec.idx, rec.delta)
        self.version = rec.version

    def remove(self, edit_id: str, version: int) -> EditRecord:
        self.check_remove(edit_id, version)
        rec = self._drop(edit_id)
        self.version = version
        return rec

    def check_remove(self, edit_id: str, version: int) -> None:
        self.expect(version)
        if edit_id not in self.live:
            raise RegistryError(f"edit {edit_id!r} is not live")

    def check_add(self, rec: EditRecord) -> None:
        self.expect(rec.version)
        self.check(rec)
        if rec.id in self.live and rec.supersedes != rec.id:
            raise RegistryError(f"edit id {rec.id!r} is already live")

    def _drop(self, edit_id: str) -> EditRecord:
        rec = self.live.pop(edit_id)
        slot, last = self._slot.pop(edit_id), len(self.order) - 1
        if slot != last:  # MaskBank.remove: the last mask takes the freed slot
            moved = self.order[last]
            self.order[slot] = moved
            self._slot[moved] = slot
        self.order.pop()
        if self.acc is not None:
            self.acc.add(rec.idx, rec.delta, -1)
        return rec
