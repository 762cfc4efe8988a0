"""What each stored edit costs in RAM and on disk, and how many edits a RAM budget holds.

Worked out from a model's shape alone (d_out, D, k, blocks, parameter count), so a model built
on the meta device, with no weights, is enough: an 8B Llama can be planned for on a laptop.
The per-edit RAM is measured, not guessed: one edit's registry entry, as a durable store holds
it (masks, routing keys, ids and its on-disk handles, no delta), is built and its allocations
counted with tracemalloc; the mask banks' bits are added (one row per mask in each bank).
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .forms import OTHER_QUESTIONS
from .guard import RANK
from .records import EditRecord

INFO_BYTES = 1500  # an edit's JSON info besides its masks (prompt, target, ids, audit fields)
AVOID = 2 * len(OTHER_QUESTIONS)  # an edit with a subject: each other question, plain and chat
RELATION = AVOID + 2  # ...and with relation masks, those again and the edit prompt's, plain and chat


def packed_masks(config) -> int:
    """Bitset masks an edit with a subject keeps under this config (EditRecord.avoid, avoid_relation,
    own_relation)."""
    if config.other_question_lead is None:
        return 0
    return AVOID + (RELATION if config.relation_lead is not None else 0)


@dataclass
class Capacity:
    d_out: int
    width: int
    k: int
    ram_per_edit: int  # bytes held in RAM per stored edit (durable store: no delta)
    ram_per_edit_in_memory_store: int  # --store memory keeps the delta and inputs in RAM too
    disk_per_edit: int  # one copy (journal record or snapshot entry); up to twice that before compaction
    delta_bytes: int
    fixed_ram: int  # W_m (int64 accumulator + fp32 copy) and the guard's D x D int64 sum
    model_bytes: int  # the base model's weights at serving precision

    def edits_within(self, budget: int) -> int:
        """Stored edits that fit in `budget` bytes of RAM beside the model and the fixed memory."""
        return max(0, (budget - self.model_bytes - self.fixed_ram) // self.ram_per_edit)

    def to_dict(self) -> dict:
        return asdict(self)


def _record_bytes(width: int, k: int, keys: int, avoid: int) -> int:
    """RAM of one stored edit's registry entry, counted with tracemalloc."""
    rng = np.random.default_rng(0)

    def mask():
        return np.sort(rng.choice(width, size=k, replace=False))

    class Handle:  # stands for ondisk.FileRef (same slots)
        __slots__ = ("file", "offset", "shape", "dtype", "crc")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rec = EditRecord(id="0123456789abcdef", prompt="x" * 60, target_new="y" * 20, author="operator",
                         metadata={}, keys=[mask().tolist() for _ in range(keys)], route=mask().tolist(),
                         avoid=[mask().tolist() for _ in range(avoid)], idx=torch.from_numpy(mask().astype(np.int64)),
                         answer_keys=np.zeros((min(2, 1 + keys), k), dtype=np.float16))
        rec.spill(delta=Handle(), inputs=Handle())
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del rec
    return held


def estimate(d_out: int, width: int, k: int, *, model_params: int = 0, model_dtype_bytes: int = 4,
             keys: int = 1, avoid: int = AVOID, guard: bool = True) -> Capacity:
    """Costs for a memory of this shape; `keys`: routing keys per edit besides its own mask (the
    chat form by default: 1; each rephrase adds one); `avoid`: bitset masks per edit (other
    questions about the subject and relation masks: packed_masks; 0 with other_question_lead off)."""
    record = _record_bytes(width, k, keys, avoid)
    banks = (2 + keys) * 8 * ((width + 63) // 64)  # bank, guard column index, one row per key
    ram = record + banks
    delta = 4 * d_out * k
    inputs = 2 * RANK * k
    avoid_text = avoid * 4 * -(-8 * ((width + 63) // 64) // 3)  # base64 of the bitsets
    answer_text = min(2, 1 + keys) * 4 * -(-2 * k // 3)  # base64 of the fp16 answer keys (plain, chat)
    disk = delta + inputs + 8 * k + INFO_BYTES + 6 * k * (1 + keys) + avoid_text + answer_text  # masks as JSON text
    fixed = 12 * d_out * width + (8 * width * width if guard else 0)
    return Capacity(d_out, width, k, ram, ram + delta + inputs, disk, delta, fixed, model_params * model_dtype_bytes)


def of_model(model, config=None, keys: int = 1) -> Capacity:
    """Costs for a loaded (or meta-device) Hugging Face model under `config` (default MemoirConfig)."""
    from . import arch
    from .config import MemoirConfig

    spec = arch.spec_for(model)
    blocks = arch.get_path(model, spec.blocks)
    width, d_out = arch.projection_shape(arch.get_path(blocks[0], spec.down), spec.conv1d)
    cfg = (config or MemoirConfig()).resolved(len(blocks), width)
    params = sum(p.numel() for p in model.parameters())
    dtype_bytes = next(model.parameters()).element_size()
    return estimate(d_out, width, cfg.k, model_params=params, model_dtype_bytes=dtype_bytes, keys=keys,
                    avoid=packed_masks(cfg), guard=cfg.protect > 0)


def parse_bytes(text: str) -> int:
    """'16GiB', '512MB', '2e9' -> bytes."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    t = text.strip().lower().removesuffix("b")
    for suffix in sorted(units, key=len, reverse=True):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * units[suffix])
    return int(float(t))
