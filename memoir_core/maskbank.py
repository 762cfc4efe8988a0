"""The mask bank: every stored edit's mask as a bitset, and a vectorised best match.

A mask of k ones in D columns is kept as ceil(D/64) 64-bit words (192 bytes for D = 1536),
so the bank for a million edits is about 200 MB and the best match is one pass of AND +
popcount over it. The pass is compiled with numba and spread over the cores; without numba
it falls back to numpy (about 20x slower at a million masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this many masks one core scans the bank in a few milliseconds. Numba's OpenMP
# workers spin for a while after each parallel pass, and on a machine with few cores that
# spinning slowed every decode step that followed a routing decision ~20x; so small banks are
# scanned serially and the workers only wake for banks where they pay off. On the 2-core
# machine of benchmarks/README.md (shared with other work) they did not pay off even at a
# million masks: one core scanned 100k masks in 0.8 ms and 1M in 10.5 ms, both cores took
# 5.4 ms and 12.3 ms (benchmarks/routing.py); hence the parallel scan only from 4M masks.
PARALLEL_FROM = 1 << 22

try:  # numba is a hard dependency in pyproject; the fallback keeps odd platforms working
    from numba import njit, prange

    @njit(cache=True, nogil=True, inline="always")
    def _row_count(bank, i, query):  # pragma: no cover - compiled
        m1 = np.uint64(0x5555555555555555)
        m2 = np.uint64(0x3333333333333333)
        m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
        h01 = np.uint64(0x0101010101010101)
        c = np.uint64(0)
        for j in range(bank.shape[1]):
            x = bank[i, j] & query[j]
            x = x - ((x >> np.uint64(1)) & m1)
            x = (x & m2) + ((x >> np.uint64(2)) & m2)
            x = (x + (x >> np.uint64(4))) & m4
            c += (x * h01) >> np.uint64(56)
        return c

    @njit(parallel=True, cache=True, nogil=True)
    def _overlap_counts_parallel(bank, query, out):  # pragma: no cover - compiled
        for i in prange(bank.shape[0]):
            out[i] = _row_count(bank, i, query)

    @njit(cache=True, nogil=True)
    def _overlap_counts_serial(bank, query, out):  # pragma: no cover - compiled
        for i in range(bank.shape[0]):
            out[i] = _row_count(bank, i, query)

    @njit(cache=True, nogil=True)
    def _scan_top(bank, query, top):  # pragma: no cover - compiled
        """The first row of largest overlap; top [m] (zeroed) gets the m largest counts, descending."""
        m = top.shape[0]
        best = 0
        for i in range(bank.shape[0]):
            c = _row_count(bank, i, query)
            if c > top[m - 1]:
                j = m - 1
                while j > 0 and top[j - 1] < c:
                    top[j] = top[j - 1]
                    j -= 1
                top[j] = c
                if j == 0:  # strictly above the best so far: ties keep the first row
                    best = i
        return best

    def _overlap_counts(bank, query, out):
        if bank.shape[0] >= PARALLEL_FROM:
            _overlap_counts_parallel(bank, query, out)
        else:
            _overlap_counts_serial(bank, query, out)

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

    def _overlap_counts(bank, query, out):
        out[:] = np.bitwise_count(bank & query).sum(axis=1)


def _top(bank: np.ndarray, query: np.ndarray, m: int) -> tuple[int, np.ndarray]:
    """The first row of largest overlap with the packed query, and the m largest counts."""
    top = np.zeros(m, dtype=np.uint64)
    if HAVE_NUMBA and bank.shape[0] < PARALLEL_FROM:
        return int(_scan_top(bank, query, top)), top
    counts = np.empty(bank.shape[0], dtype=np.uint64)
    _overlap_counts(bank, query, counts)
    n = min(m, counts.size)
    top[:n] = np.sort(np.partition(counts, counts.size - n)[counts.size - n:])[::-1]
    return int(counts.argmax()), top


def warm_up() -> None:
    """Compile the scan (or load it from numba's cache) now: the first routing would otherwise
    pay 0.1-0.5 s, inside somebody's request or edit."""
    bits = np.zeros((1, 1), dtype=np.uint64)
    _overlap_counts(bits, bits[0], np.empty(1, dtype=np.uint64))
    _top(bits, bits[0], 2)


def pack(indices: np.ndarray, width: int) -> np.ndarray:
    """Indices [k] (or [B, k]) -> packed words [W] (or [B, W]) of uint64."""
    indices = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    words = (width + 63) // 64
    dense = np.zeros((indices.shape[0], words * 64), dtype=bool)
    np.put_along_axis(dense, indices, True, axis=1)
    packed = np.packbits(dense, axis=1, bitorder="little").view("<u8")
    return packed


def unpack(words: np.ndarray, width: int) -> np.ndarray:
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:width])


@dataclass(frozen=True)
class Match:
    edit_id: str | None  # None: the bank is empty
    overlap: float  # |m_q AND m_i| / k of the best stored mask
    runner_up: float = 0.0  # overlap of the rank-th best stored mask (best(rank=)); 0 when fewer


class MaskBank:
    """Masks keyed by edit id, densely packed. An id may hold several masks (routing keys)."""

    def __init__(self, width: int, k: int, capacity: int = 1024):
        self.width = width
        self.k = k
        self.words = (width + 63) // 64
        self._bits = np.zeros((capacity, self.words), dtype=np.uint64)
        self._ids: list[str] = []  # edit id of each slot
        # hash(edit id) of each slot. Finding an id's slots is one vectorised compare (about
        # 0.5 ms at a million masks, and only adds, rollbacks and mask_of need it); a dict from
        # id to slot would cost 50-70 bytes per mask, a third of the mask itself.
        self._keys = np.zeros(capacity, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, edit_id: str) -> bool:
        return bool(self._find(edit_id))

    @property
    def ids(self) -> list[str]:
        """The edit id of every slot, in bank order."""
        return list(self._ids)

    @property
    def bytes_per_mask(self) -> int:
        return self.words * 8

    def _find(self, edit_id: str) -> list[int]:
        n = len(self._ids)
        hits = np.flatnonzero(self._keys[:n] == hash(edit_id))
        return [int(s) for s in hits if self._ids[s] == edit_id]  # a hash collision is not a match

    def _slots_of(self, edit_id: str) -> list[int]:
        slots = self._find(edit_id)
        if not slots:
            raise KeyError(edit_id)
        return slots

    def add(self, edit_id: str, indices) -> None:
        """Store one mask [k] or several [n, k] under an edit id that is not in the bank yet."""
        if edit_id in self:
            raise KeyError(f"edit {edit_id!r} is already in the bank")
        packed = pack(np.asarray(indices), self.width)
        n, m = len(self._ids), packed.shape[0]
        if n + m > self._bits.shape[0]:
            capacity = max(1024, n + m + (n + m) // 2)  # 1.5x: the spare rows are memory too
            grown = np.zeros((capacity, self.words), dtype=np.uint64)
            grown[:n] = self._bits[:n]
            self._bits = grown
            keys = np.zeros(capacity, dtype=np.int64)
            keys[:n] = self._keys[:n]
            self._keys = keys
        self._bits[n : n + m] = packed
        self._keys[n : n + m] = hash(edit_id)
        self._ids.extend([edit_id] * m)

    def remove(self, edit_id: str) -> None:
        """Swap-remove: the last masks take the freed slots, so the bank stays dense."""
        # Descending order: the last slot is never one of this id's still to be removed.
        for slot in sorted(self._slots_of(edit_id), reverse=True):
            last = len(self._ids) - 1
            if slot != last:
                self._bits[slot] = self._bits[last]
                self._keys[slot] = self._keys[last]
                self._ids[slot] = self._ids[last]
            self._bits[last] = 0
            self._ids.pop()

    def mask_of(self, edit_id: str) -> np.ndarray:
        return unpack(self._bits[self._slots_of(edit_id)[0]], self.width)

    def counts(self, indices) -> np.ndarray:
        """Overlap counts of one query mask with every stored mask, in bank order."""
        n = len(self._ids)
        out = np.empty(n, dtype=np.uint64)
        if n:
            _overlap_counts(self._bits[:n], pack(np.asarray(indices), self.width)[0], out)
        return out

    def overlap_of(self, edit_id: str, indices) -> float:
        """The best overlap of one query mask with this edit's masks, in [0, 1] (0: not stored)."""
        slots = self._find(edit_id)
        if not slots:
            return 0.0
        shared = self._bits[slots] & pack(np.asarray(indices), self.width)[0]
        return float(np.bitwise_count(shared).sum(axis=1).max()) / self.k

    def best(self, queries, rank: int = 1) -> list[Match]:
        """Best stored mask for each query mask [B, k], with the overlap of the rank-th best
        (rank 1: the best itself) as its runner_up."""
        result = []
        n = len(self._ids)
        for q in np.atleast_2d(np.asarray(queries)):
            if n == 0:
                result.append(Match(None, 0.0))
                continue
            i, top = _top(self._bits[:n], pack(q, self.width)[0], max(1, rank))
            result.append(Match(self._ids[i], float(top[0]) / self.k, float(top[-1]) / self.k))
        return result

    def top_overlaps(self, query, m: int) -> np.ndarray:
        """The m largest overlaps of one query mask with the stored masks, descending (0-padded)."""
        n = len(self._ids)
        if n == 0:
            return np.zeros(m)
        return _top(self._bits[:n], pack(np.asarray(query), self.width)[0], m)[1] / self.k

    def export(self) -> tuple[list[str], np.ndarray]:
        n = len(self._ids)
        return list(self._ids), self._bits[:n].copy()

    @classmethod
    def restore(cls, width: int, k: int, ids: list[str], bits: np.ndarray) -> "MaskBank":
        n = len(ids)
        bank = cls(width, k, capacity=max(1024, n))
        bank._bits[:n] = bits
        bank._ids = list(ids)
        bank._keys[:n] = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=n)
        return bank
