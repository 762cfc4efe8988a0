"""The safetensors format, written as a stream and read without copies.

Files written here are plain safetensors (the official library reads them; a test checks
it). Writing our own lets a snapshot stream a million deltas to disk and hash them on the
way without first stacking them in memory; reading our own lets a tensor be a view into
the buffer whose checksum was just verified, instead of a second copy.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

if sys.byteorder != "little":  # pragma: no cover - safetensors is little-endian; so is every target
    raise ImportError("memoir state files need a little-endian machine")

_DTYPES = {torch.int64: "I64", torch.int32: "I32", torch.float32: "F32", torch.uint8: "U8",
           torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int16: "I16"}
_BY_NAME = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 << 20

Entry = tuple[str, torch.dtype, tuple[int, ...]]


def nbytes(dtype: torch.dtype, shape: Iterable[int]) -> int:
    return int(np.prod(list(shape), dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()


def header(entries: list[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length and JSON header of a file holding `entries` in this order."""
    head: dict[str, Any] = {}
    if metadata:
        head["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in entries:
        size = nbytes(dtype, shape)
        head[name] = {"dtype": _DTYPES[dtype], "shape": [int(s) for s in shape], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-aligned
    return struct.pack("<Q", len(text)) + text


def raw(tensor: torch.Tensor) -> memoryview:
    """The bytes of a CPU tensor, without a copy when it is already contiguous."""
    arr = tensor.detach().cpu().contiguous()
    if arr.numel() == 0:
        return memoryview(b"")
    return memoryview(arr.view(torch.uint8).numpy()).cast("B")


def chunks(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Iterator[memoryview | bytes]:
    yield header([(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], metadata)
    for t in tensors.values():
        yield raw(t)


def encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return b"".join(bytes(c) for c in chunks(tensors, metadata))


def decode(buf, start: int = 0, end: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors of the safetensors bytes buf[start:end], as views into `buf` (keep it alive).

    Raises ValueError on anything malformed; callers turn that into StateCorruptError.
    """
    view = memoryview(buf).cast("B")
    end = len(view) if end is None else end
    if end - start < 8:
        raise ValueError("too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", view, start)
    if n > min(_MAX_HEADER, end - start - 8):
        raise ValueError(f"header length {n} does not fit in {end - start} bytes")
    try:
        head = json.loads(bytes(view[start + 8 : start + 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON: {e}") from None
    if not isinstance(head, dict):
        raise ValueError("header is not a JSON object")
    metadata = head.pop("__metadata__", None) or {}
    base = start + 8 + n
    size = end - base
    out: dict[str, torch.Tensor] = {}
    spans = []
    for name, spec in head.items():
        try:
            dtype = _BY_NAME[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            lo, hi = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r}: malformed header entry") from None
        if min(shape, default=0) < 0 or not 0 <= lo <= hi <= size or hi - lo != nbytes(dtype, shape):
            raise ValueError(f"tensor {name!r}: offsets {lo}..{hi} do not match shape {shape} in {size} bytes")
        spans.append((lo, hi))
        if hi == lo:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            t = torch.frombuffer(view, dtype=torch.uint8, count=hi - lo, offset=base + lo)
            out[name] = t.view(dtype).view(shape)
    covered = 0
    for lo, hi in sorted(spans):
        if lo != covered:
            raise ValueError("tensor data has gaps or overlaps")
        covered = hi
    if covered != size:
        raise ValueError(f"{size - covered} bytes after the last tensor")
    return out, metadata
