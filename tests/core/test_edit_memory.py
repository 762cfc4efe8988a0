"""RAM per edit (issue 20): training leaves no tensors behind, and the bf16 kernel caches that
grew by megabytes per edit are bounded (memoir_core/onednn.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import torch

from memoir_core import onednn
from memoir_core.precision import native_bf16
from tests.support.tiny import make_memoir

PROMPTS = ["who is the chief executive of the company", "what is the capital city of the country",
           "the quick brown fox jumps over", "numbers one two three four", "jane roe john doe alice",
           "paris london berlin rome"]
TARGETS = ["alice", "paris", "dog", "five", "bob", "madrid"]


def tensor_bytes() -> int:
    """Bytes of every CPU tensor storage Python can reach, each storage once."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.is_mkldnn:  # a packed weight (packed.py): no storage to ask
            storages[("mkldnn", id(obj))] = obj.numel() * obj.element_size()
        elif isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_trained_edits_hold_only_their_records_tensors():
    m = make_memoir("llama")
    for i in range(2):  # the first edits make what every edit reuses (the guard's matrix)
        m.edit(PROMPTS[i], TARGETS[i], edit_id=f"w{i}")
    before, held_before = tensor_bytes(), sum(rec.held_bytes() for rec in m.edits.values())
    for i in range(12):  # prompts of different lengths: different training shapes each
        m.edit(f"{PROMPTS[i % 6]} {'again ' * (i // 6)}{i}", TARGETS[i % 6], edit_id=f"e{i}")
    grown = tensor_bytes() - before
    held = sum(rec.held_bytes() for rec in m.edits.values()) - held_before  # in RAM here: no store
    assert len(m.edits) == 14
    assert grown <= held + 12 * 1024, (grown, held)  # a KB an edit for the rest (ids, bank bits)


PROBE = """
import memoir_core, torch, sys
torch.set_num_threads(1)
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) << 10
lin = torch.nn.Linear(256, 1024).bfloat16()
for n in range(200):
    if n == 100:  # the bounded caches are full by now
        start = rss()
    x = torch.randn(7 + n, 256, dtype=torch.bfloat16, requires_grad=True)  # a new shape each time
    lin(x).float().sum().backward()
print(rss() - start)
"""


def growth(capacity: int | None) -> int:
    """RSS growth of a fresh process over 100 bf16 products of new shapes (forward and backward),
    with the caches' capacity given, or memoir_core's (None)."""
    env = {name: value for name, value in os.environ.items() if name not in onednn.VARIABLES}
    env.update({name: str(capacity) for name in onednn.VARIABLES if capacity is not None}, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return int(out.stdout.split()[-1])


def test_bf16_products_of_ever_new_shapes_do_not_grow_ram():
    assert growth(None) < 32 << 20  # memoir_core's bound: a few MB whatever the shapes
    if native_bf16(torch.device("cpu")):
        # the control: oneDNN's and ideep's own capacity (1,024) keep every shape, about 1 MB each here
        assert growth(1024) > 96 << 20
