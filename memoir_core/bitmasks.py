"""Column masks as bitsets in a record: the masks it only scores against (EditRecord.avoid).

A mask of k sorted column indices out of D costs 2k bytes as uint16 and about 5k as JSON text; as
a bitset (maskbank.pack's 64-bit words) it costs D/8 whatever k is: 192 bytes against 880 for the
default model's k = 440 of D = 1536, and a base64 string of 256 characters in a record's info().
A packed set is a uint64 array [n, W]; W is the fewest words that hold every mask's largest
column, so packing needs no width, and columns past W * 64 are absent from every mask.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

from .maskbank import pack as pack_words
from .maskbank import unpack

EMPTY = np.zeros((0, 0), dtype=np.uint64)


def pack(masks: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Masks of equal size given as column indices [n, k] -> bitsets [n, W] uint64."""
    try:
        indices = np.asarray(masks, dtype=np.int64)
    except ValueError:  # ragged
        indices = None
    if indices is not None and not indices.size:
        return EMPTY
    if indices is None or indices.ndim != 2:
        raise ValueError("masks must all have the same number of columns")
    if indices.min() < 0:
        raise ValueError("a mask's column indices must be 0 or more")
    return pack_words(indices, int(indices.max()) + 1)


def columns(packed: np.ndarray) -> list[list[int]]:
    """The inverse of pack: each mask's sorted column indices."""
    return [unpack(row, packed.shape[1] * 64).tolist() for row in packed]


def overlaps(packed: np.ndarray, mask: Sequence[int] | np.ndarray) -> np.ndarray:
    """Columns each packed mask shares with `mask` (column indices) -> [n] int."""
    if not packed.size:
        return np.zeros(len(packed), dtype=np.int64)
    width = packed.shape[1] * 64
    cols = np.asarray(mask, dtype=np.int64)
    query = pack_words(cols[cols < width], width)  # no packed mask holds a column past its words
    return np.bitwise_count(packed & query).sum(axis=1, dtype=np.int64)


def encode(packed: np.ndarray) -> list[str]:
    """JSON form: one base64 string of little-endian words per mask."""
    return [base64.b64encode(row.astype("<u8").tobytes()).decode("ascii") for row in packed]


def decode(value) -> np.ndarray:
    """A record's stored masks, in either form a store may hold: base64 strings (encode), or lists
    of column indices (records written before the masks were packed)."""
    if isinstance(value, np.ndarray) and value.dtype == np.uint64 and value.ndim == 2:
        return value
    items = list(value)
    if not items:
        return EMPTY
    if all(isinstance(item, str) for item in items):
        raw = [base64.b64decode(item, validate=True) for item in items]
        if len({len(r) for r in raw}) != 1 or len(raw[0]) % 8:
            raise ValueError("packed masks of one record must be whole 64-bit words of the same length")
        return np.stack([np.frombuffer(r, dtype="<u8").astype(np.uint64) for r in raw])
    return pack(items)
