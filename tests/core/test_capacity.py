"""Capacity planning (memoir_core/capacity.py, `memoir model info`): per-edit costs from a shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memoir_core import capacity


def test_a_stored_edit_of_the_default_model_costs_a_few_kb_of_ram_and_its_delta_on_disk():
    cost = capacity.estimate(576, 1536, 440)
    assert 2_000 < cost.ram_per_edit < 16_384  # masks and ids only: the 16 KB ceiling
    assert cost.delta_bytes == 4 * 576 * 440 and cost.disk_per_edit > cost.delta_bytes
    assert cost.ram_per_edit_in_memory_store > cost.delta_bytes  # --store memory keeps it
    assert cost.edits_within(cost.fixed_ram + 10 * cost.ram_per_edit) == 10
    assert cost.edits_within(0) == 0


def test_an_edits_masks_of_other_questions_cost_bits_not_indices():
    without = capacity.estimate(576, 1536, 440, avoid=0)
    with_avoid = capacity.estimate(576, 1536, 440, avoid=12)
    extra = with_avoid.ram_per_edit - without.ram_per_edit
    assert 12 * 1536 // 8 <= extra < 12 * 2 * 440  # 192-byte bitsets, under what uint16 indices would hold
    assert with_avoid.disk_per_edit - without.disk_per_edit == 12 * 256  # a base64 string of 256 characters each


@pytest.mark.parametrize("text,value", [("16GiB", 16 << 30), ("512MB", 512 * 10**6), ("2e9", 2 * 10**9),
                                        ("64 KiB", 64 << 10)])
def test_ram_budgets_read_as_people_write_them(text, value):
    assert capacity.parse_bytes(text) == value


def test_model_info_plans_an_8b_llama_without_its_weights():
    out = subprocess.run([sys.executable, "-m", "memoir_cli.main", "model", "info", "--shape", "llama-8b",
                          "--ram-budget", "64GiB"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["D"], info["d_out"], info["k"]) == (14336, 4096, 4096)
    assert info["per_edit"]["delta_bytes"] == 4 * 4096 * 4096  # 67 MB: why deltas stay on disk
    assert info["per_edit"]["ram_bytes"] < 96 << 10  # bitset masks, D / 8 bytes each (capacity.packed_masks)
    assert 15e9 < info["fixed"]["model_bytes"] < 17e9  # 8.0B parameters in bf16
    spare = 64 * 2**30 - info["fixed"]["model_bytes"] - info["fixed"]["memory_and_guard_bytes"]
    assert info["ram_budget"]["edits"] == spare // info["per_edit"]["ram_bytes"]
