"""The dtype edits train in (memoir_core/precision.py): measured on the machine, not read off its flags."""

from __future__ import annotations

import math

import torch

from memoir_core import precision
from tests.support.tiny import make_memoir, tiny_model


def test_auto_trains_in_bf16_only_where_bf16_products_measure_faster(monkeypatch):
    model = tiny_model("llama", 64)
    assert next(model.parameters()).dtype == torch.float32
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    seen = []

    def speedup(value):
        def probe(d_in, d_out, *args, **kwargs):
            seen.append((d_in, d_out))
            return value
        return probe

    # an Intel Xeon with AVX512-BF16 and no AMX measured 0.6x: native bf16, yet slower
    monkeypatch.setattr(precision, "bf16_speedup", speedup(0.6))
    assert precision.train_dtype(model, "auto", (96, 32)) == torch.float32
    assert seen == [(96, 32)]  # the probe ran at the shape given
    monkeypatch.setattr(precision, "bf16_speedup", speedup(precision.BF16_MIN_SPEEDUP - 0.01))
    assert precision.train_dtype(model, "auto", (96, 32)) == torch.float32  # within the margin: no switch
    monkeypatch.setattr(precision, "bf16_speedup", speedup(2.3))  # an AMD Zen 4
    assert precision.train_dtype(model, "auto", (96, 32)) == torch.bfloat16
    # no native bf16: never, whatever a probe would say; a named dtype is taken as named
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.train_dtype(model, "auto", (96, 32)) == torch.float32
    assert precision.train_dtype(model, "bfloat16", (96, 32)) == torch.bfloat16


def test_the_probe_times_both_products():
    ratio = precision.bf16_speedup(128, 64, rows=8, repeats=2)
    assert math.isfinite(ratio) and ratio > 0


def test_a_memoir_reports_the_dtype_it_trains_in():
    fp32 = make_memoir("llama", train_dtype="float32", max_steps=2)
    assert fp32.train_dtype == "float32"
    bf16 = make_memoir("llama", train_dtype="bfloat16", max_steps=2)
    assert bf16.train_dtype == "bfloat16" and next(bf16.train_model.parameters()).dtype == torch.bfloat16
    assert bf16.train_model is not bf16.model


class Passthrough(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def test_a_twin_shares_every_weight_and_nothing_else():
    model = tiny_model("llama", 64)
    other = precision.twin(model)
    assert other is not model
    mine = dict(model.named_parameters())
    theirs = dict(other.named_parameters())
    assert mine.keys() == theirs.keys() and all(mine[n] is theirs[n] for n in mine)  # no weight copied
    assert all(a is not b for a, b in zip(model.modules(), other.modules()))  # every module its own
    fired = []
    other.model.layers[1].register_forward_pre_hook(lambda *_: fired.append(1))
    other.model.layers[0] = Passthrough()  # a block swap (blockrun.py) on the twin only
    ids = torch.randint(3, 60, (1, 5))
    model(input_ids=ids)
    assert fired == [] and not isinstance(model.model.layers[0], Passthrough)
    other(input_ids=ids)
    assert fired == [1]


def test_a_model_with_a_forward_bound_to_a_module_trains_on_itself():
    # accelerate's hooks bind a module's forward to that very object: a twin would run the original
    model = tiny_model("llama", 64)
    layer = model.model.layers[0].mlp
    layer.forward = layer.forward  # an instance attribute, as accelerate leaves it
    assert precision.training_model(model, torch.float32) is model
