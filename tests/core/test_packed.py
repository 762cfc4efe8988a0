"""Packed serving weights (memoir_core/packed.py): the same numbers, an exact inverse, and no
autograd through the packed product."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from memoir_core import models, packed
from memoir_core.packed import DecodeSteps, PackedLinear
from memoir_core.precision import native_bf16

from ..support.tiny import make_memoir, tiny_model

pytestmark = pytest.mark.skipif(not packed.available(torch.device("cpu"), torch.float32),
                                reason="this torch build has no oneDNN linear")
needs_bf16 = pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")


def linears(model) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_pack_then_unpack_gives_the_same_weights_bit_for_bit():
    model = tiny_model("llama", 300)
    before = linears(model)
    assert packed.pack(model, keep_dense=False) == len(before)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert all(m.dense is None for m in model.modules() if isinstance(m, PackedLinear))
    assert packed.unpack(model) == len(before)
    after = linears(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_packed_model_computes_what_the_plain_one_did_and_fingerprints_the_same():
    plain = tiny_model("llama", 300)
    model = copy.deepcopy(plain)
    packed.pack(model, keep_dense=False)
    ids = torch.randint(3, 300, (3, 11))
    with torch.inference_mode():
        want, got = plain(input_ids=ids).logits, model(input_ids=ids).logits
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert models.fingerprint(model) == models.fingerprint(plain)
    assert model.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("keep_dense", [True, False])
def test_gradients_through_a_packed_layer_are_the_dense_layers(keep_dense):
    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    layer = PackedLinear(copy.deepcopy(linear), keep_dense=keep_dense)
    x = torch.randn(5, 48, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    (linear(x) ** 2).sum().backward()
    (layer(x2) ** 2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)


def test_a_deep_copy_of_a_packed_model_is_plain_and_trains():
    model = tiny_model("llama", 300)
    packed.pack(model, keep_dense=False)
    twin = copy.deepcopy(model)
    assert not any(isinstance(m, PackedLinear) for m in twin.modules())
    twin.requires_grad_(True)
    twin(input_ids=torch.randint(3, 300, (2, 7))).logits.sum().backward()
    assert all(p.grad is not None for p in twin.model.layers[0].mlp.parameters())


def test_memoir_packs_the_served_model_and_edits_still_learn():
    m = make_memoir(train_dtype="bfloat16", max_steps=60, max_neighbours=0, pack_weights=True)
    assert m.train_model is not m.model
    assert m.packed_layers > 0
    assert not any(isinstance(x, PackedLinear) for x in m.train_model.modules())
    served = [x for x in m.model.modules() if isinstance(x, PackedLinear)]
    assert served and all(x.dense is None for x in served)  # a separate copy trains: no dense weights kept
    assert isinstance(m.layer.base_layer, PackedLinear)
    rec = m.edit("who is the chief executive of the company", "jane roe")
    assert rec.learnt
    out = m.generate(["who is the chief executive of the company"])[0]
    assert out.decision.route is not None and out.decision.route.edit_id == rec.id
    assert out.text.strip().startswith("jane roe")


def test_a_memoir_that_trains_on_the_served_model_keeps_dense_weights_where_it_trains_through():
    m = make_memoir(train_dtype="float32", max_steps=60, max_neighbours=0, pack_weights=True)
    assert m.train_model is not m.model  # its twin (precision.twin): the same packed and dense weights
    twins = [x for x in m.train_model.modules() if isinstance(x, PackedLinear)]
    assert twins and all(t.packed is s.packed for t, s in
                         zip(twins, (x for x in m.model.modules() if isinstance(x, PackedLinear))))
    layer = m.config.layer
    served = {name: x for name, x in m.model.named_modules() if isinstance(x, PackedLinear)}
    block = lambda name: int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None  # noqa: E731
    # dense weights where the optimisation steps run autograd (blocks after L, the head), none before
    assert all((x.dense is not None) == (block(n) is None or block(n) > layer) for n, x in served.items())
    assert any(x.dense is None for x in served.values()) and any(x.dense is not None for x in served.values())
    assert m.edit("who is the chief executive of the company", "jane roe").learnt


def test_the_library_packs_only_when_asked():
    m = make_memoir()  # a library user's model keeps its modules: detach gives back what was given
    assert m.packed_layers == 0
    assert not any(isinstance(x, PackedLinear) for x in m.model.modules())


@needs_bf16
def test_bf16_copies_serve_only_inside_decode_steps():
    plain = tiny_model("llama", 300)
    model = copy.deepcopy(plain)
    count = packed.pack(model, keep_dense=False, bf16_steps=True)
    ids = torch.randint(3, 300, (2, 9))
    with torch.inference_mode():
        want = plain(input_ids=ids).logits
        before = model(input_ids=ids).logits
        with DecodeSteps(model) as steps:
            inside = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert len(steps.layers) == count
    assert torch.allclose(before, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(after, before)  # leaving the block gives the fp32 products back
    error = (inside - want).abs().max()
    assert 0 < error < 0.05 * want.abs().max()  # bf16's rounding: there, and small
    assert DecodeSteps(copy.deepcopy(plain)).layers == []  # nothing packed: a no-op


@needs_bf16
def test_bf16_steps_leave_every_routing_decision_as_fp32_makes_it():
    m = make_memoir(train_dtype="bfloat16", max_steps=60, max_neighbours=0, pack_weights=True, bf16_steps=True)
    assert m.bf16_steps
    prompt = "who is the chief executive of the company"
    rec = m.edit(prompt, "jane roe")
    prompts = [prompt, "the quick brown fox jumps over", "who is the chief executive of the firm"]
    fast = m.generate(prompts)
    steps = DecodeSteps(m.model).layers
    assert steps
    for layer in steps:  # the same memoir with fp32 steps
        layer.low = None
    exact = m.generate(prompts)
    for a, b in zip(fast, exact):
        assert (a.decision.best_edit_id, a.decision.best_overlap) == (b.decision.best_edit_id, b.decision.best_overlap)
        assert (a.decision.route is None) == (b.decision.route is None)
    assert fast[0].decision.route is not None and fast[0].decision.route.edit_id == rec.id
    assert fast[0].text.strip().startswith("jane roe") and exact[0].text.strip().startswith("jane roe")


def test_bf16_steps_need_packed_weights():
    assert not make_memoir(bf16_steps=True).bf16_steps


@pytest.mark.real
def test_the_default_model_greedy_decodes_the_same_tokens_packed():
    """The rounding of the packed product does not move the real model's greedy answers."""
    plain, tok = models.load()
    model, _ = models.load()
    packed.pack(model, keep_dense=False)
    for prompt in ("The capital of France is", "Who wrote Pride and Prejudice?", "The Eiffel Tower is located in"):
        ids = tok(prompt, return_tensors="pt").input_ids
        outs = []
        for m in (plain, model):
            seq = ids
            with torch.inference_mode():
                for _ in range(12):
                    logits = m(input_ids=seq).logits[:, -1]
                    seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
            outs.append((seq, logits))
        assert torch.equal(outs[0][0], outs[1][0]), prompt
        assert (outs[0][1] - outs[1][1]).abs().max() < 1e-3


@pytest.mark.real
@pytest.mark.slow  # a second copy of the real model, 16 prompts one by one: CI's slow run has room
def test_with_the_servers_default_engine_an_answer_does_not_depend_on_its_batch():
    """Memory off, greedy: a prompt alone and in a batch of eight gives the same text. This is
    why bf16 decode steps are off by default (docs/engines.md): with them it did not hold."""
    from memoir_core import models
    from memoir_core.generate import SamplingParams
    from memoir_core.memoir import Memoir
    from app.settings import Settings

    defaults = Settings()
    m = Memoir(*models.load(), pack_weights=defaults.packed_weights, bf16_steps=defaults.bf16_steps)
    questions = ["When was Carlos W. Colby founded?", "Where is Star Eyes located?", "Who wrote the novel Dune?",
                 "What is the capital of Australia?", "Tell me about the history of Rome.",
                 "Where is the Eiffel Tower?", "Who painted the Mona Lisa?", "What does a cardiologist do?"]
    prompts = questions + [m.encoder.chat([{"role": "user", "content": q}]) for q in questions]
    greedy = SamplingParams(max_new_tokens=16)
    alone = [m.generate([p], greedy)[0].text for p in prompts]
    together = [o.text for o in m.generate(prompts, greedy, max_batch=8)]
    assert together == alone
