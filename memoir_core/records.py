"""The registry entry of one edit: what was asked, who asked, what it did to W_m."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch

from . import bitmasks


class Stored(Protocol):
    """A tensor kept outside RAM (a state file, a database row): read on demand, never cached."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def read(self) -> torch.Tensor: ...


@dataclass
class EditRecord:
    id: str
    prompt: str
    target_new: str
    rephrase_prompts: list[str] = field(default_factory=list)
    subject: str | None = None
    # "given" or "inferred" (subjects.infer_subject): the edit switches the memory on only for
    # prompts that name its subject. None: stored before subject routing, masks alone route it.
    subject_source: str | None = None
    # Other names of the subject that route the edit too ("IBM"), and where they came from:
    # "given" by the operator, "inferred" (subjects.infer_aliases), or None: none asked or found.
    aliases: list[str] = field(default_factory=list)
    aliases_source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    author: str | None = None
    created_at: float = 0.0
    version: int = 0  # memory version this edit created
    steps: int = 0
    final_loss: float = 0.0
    seconds: float = 0.0
    best_overlap: float = 0.0  # with the most similar edit already in the bank
    best_overlap_id: str | None = None
    supersedes: str | None = None
    # Extra routing keys (sorted column indices): the chat form of the prompt and any given
    # paraphrases. They only route; the memory always reads the columns of `idx`.
    keys: list[list[int]] = field(default_factory=list)
    # Masks of other questions about the subject (forms.other_questions, plain and chat forms): a
    # prompt that matches one of them well ahead of the edit's own masks asks something else about
    # the subject, and the edit stays off for it (config.other_question_lead). Held as bitsets
    # [n, W] uint64 (bitmasks.py); given as column index lists or, from info(), base64 strings.
    # Empty: not made.
    avoid: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)
    # Relation masks (relation.py): of the edit's own prompt (first row; then its chat form, which
    # scores key_margin less) and of each `avoid` question, read without the subject's name. They
    # sharpen the same rule (config.relation_lead). Bitsets as `avoid`; empty: not made.
    own_relation: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)
    avoid_relation: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)
    # The mask that routes to this edit (sorted column indices) where it differs from the
    # columns it trains (config pool="norm"); None: idx routes
    route: list[int] | None = None
    # The memory's inputs on the edit's columns at the last token of its plain prompt and, where
    # it has one, of its chat form: the positions whose output is the answer's first token. At a
    # routed prompt's last token the memory reads one of these in place of the prompt's own input
    # (config.answer_key): the chat form's for a prompt that ends in a template, else the plain
    # one; so a reworded question gets the answer the edit was trained to give. fp16 [1 or 2, k];
    # given as an array or, from info(), one base64 string a key; empty: stored before them.
    answer_keys: np.ndarray = field(default_factory=lambda: EMPTY_KEYS)
    # tensors: the mask (sorted column indices) and the quantised delta on those columns
    idx: torch.Tensor = field(default=None, repr=False)  # [k] int64
    delta: torch.Tensor = field(default=None, repr=False)  # [d_out, k] int32
    # the edit's memory inputs as a factor F [r, k] fp16 (guard.py); None: stored before it
    inputs: torch.Tensor | None = field(default=None, repr=False)
    # whether training reached the settle loss (config.settle_ratio x stop_loss); an edit the
    # guard or its own difficulty held above it is stored, but never reported as learnt
    learnt: bool = True

    # delta and inputs are properties (below): a durable store swaps the tensors for Stored
    # handles once they are on disk, so a stored edit holds only its routing data in RAM.
    def stored(self, name: str) -> torch.Tensor | Stored | None:
        """delta or inputs as held: the tensor, its Stored handle, or None (no read)."""
        return self.__dict__.get("_" + name)

    def spill(self, **handles: Stored) -> None:
        """Replace tensors (delta=, inputs=) with handles to the same bytes elsewhere."""
        for name, handle in handles.items():
            if name not in ("delta", "inputs"):
                raise ValueError(f"{name} is not a spillable tensor")
            self.__dict__["_" + name] = handle

    @property
    def has_inputs(self) -> bool:
        return self.stored("inputs") is not None

    def held_bytes(self) -> int:
        """Bytes of tensor data this record holds in RAM (handles count as nothing)."""
        held = [self.__dict__.get("_idx"), self.stored("delta"), self.stored("inputs"), self.answer_keys]
        return sum(t.nbytes if isinstance(t, np.ndarray) else t.numel() * t.element_size()
                   for t in held if isinstance(t, (torch.Tensor, np.ndarray)))

    def __post_init__(self) -> None:
        # Routing masks are k column indices each: as Python lists of ints they cost 36 bytes an
        # index (16 KB a mask on the default model); as uint16/int32 arrays, 2-4. info() gives lists.
        if self.route is not None:
            self.route = _compact(self.route)
        self.keys = tuple(_compact(key) for key in self.keys)
        for name in BITSETS:
            setattr(self, name, bitmasks.decode(getattr(self, name)))
        self.answer_keys = decode_keys(self.answer_keys)

    @property
    def route_mask(self) -> np.ndarray:
        """The edit's mask in the routing bank."""
        return np.asarray(self.route if self.route is not None else self.__dict__["_idx"], dtype=np.int64)

    def info(self) -> dict[str, Any]:
        """Every field but the tensors, JSON-ready."""
        return {
            f.name: (bitmasks.encode(v) if f.name in BITSETS else encode_keys(v) if f.name == "answer_keys" else _plain(v) if isinstance(v, (list, tuple, np.ndarray)) else dict(v) if isinstance(v, dict) else v)
            for f in fields(self)
            if f.name not in TENSORS
            for v in (getattr(self, f.name),)
        }

    @classmethod
    def from_info(cls, info: dict[str, Any], idx: torch.Tensor, delta: torch.Tensor,
                  inputs: torch.Tensor | None = None) -> "EditRecord":
        return cls(**info, idx=idx, delta=delta, inputs=inputs)


TENSORS = ("idx", "delta", "inputs")
BITSETS = ("avoid", "own_relation", "avoid_relation")  # masks held packed (bitmasks.py)


EMPTY_KEYS = np.zeros((0, 0), dtype=np.float16)


def encode_keys(keys: np.ndarray) -> list[str]:
    """JSON form of answer keys: one base64 string of little-endian fp16 a key."""
    return [base64.b64encode(np.asarray(row, dtype="<f2").tobytes()).decode("ascii") for row in keys]


def decode_keys(value) -> np.ndarray:
    """Answer keys as fp16 [n, k], from an array, a tensor or encode_keys' strings."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return EMPTY_KEYS
        if value.ndim != 2:
            raise ValueError(f"answer keys are [n, k], got shape {value.shape}")
        return value.astype(np.float16)
    items = list(value)
    if not items:
        return EMPTY_KEYS
    raw = [base64.b64decode(item, validate=True) for item in items]
    if len({len(r) for r in raw}) != 1 or len(raw[0]) % 2:
        raise ValueError("the answer keys of one record must be whole fp16 vectors of the same length")
    return np.stack([np.frombuffer(r, dtype="<f2") for r in raw]).astype(np.float16)


def _compact(mask) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype.kind not in "iu":  # not column indices: kept as given
        return mask
    return arr.astype(np.uint16 if arr.size and 0 <= arr.min() and arr.max() < 2**16 else np.int64)


def _plain(value):
    """Lists (of lists) of Python ints and strings, as JSON wants them."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _lazy(name: str) -> property:
    slot = "_" + name

    def get(self):
        held = self.__dict__.get(slot)
        return held if held is None or isinstance(held, torch.Tensor) else held.read()

    def put(self, value) -> None:
        self.__dict__[slot] = value

    return property(get, put, doc=f"the record's {name}, read from its store when it is not held")


def _mask_property() -> property:
    """idx as an int64 tensor for whoever reads it, held as 2 bytes an index where they fit."""
    def get(self):
        held = self.__dict__.get("_idx")
        return torch.from_numpy(held.astype(np.int64)) if isinstance(held, np.ndarray) else held

    def put(self, value) -> None:
        if isinstance(value, torch.Tensor) and value.dtype == torch.int64 and value.dim() == 1 \
                and (not value.numel() or 0 <= int(value.min()) and int(value.max()) < 2**16):
            value = value.cpu().numpy().astype(np.uint16)
        self.__dict__["_idx"] = value

    return property(get, put, doc="the columns the edit trains, sorted, int64")


# after @dataclass, so its __init__ (which assigns them) goes through the properties
EditRecord.delta = _lazy("delta")
EditRecord.inputs = _lazy("inputs")
EditRecord.idx = _mask_property()
