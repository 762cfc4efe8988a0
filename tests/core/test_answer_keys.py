"""Answer keys (records.EditRecord.answer_keys): at a routed prompt's last token the memory reads
the edit's own input there, so a reworded question gets the answer the edit was trained to give."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from memoir_core.memory_layer import BatchRouting, Decision, ResidualMemory, Route
from memoir_core.records import EditRecord
from memoir_core.store.registry import Registry, RegistryError
from tests.support.tiny import make_memoir


def _layer_out(key, span_ends_at_last: list[bool]):
    """The layer's output for 2 rows of 5 tokens, both routed to one route with `key`."""
    torch.manual_seed(0)
    base = nn.Linear(8, 6, bias=False)
    layer = ResidualMemory(base)
    idx = torch.tensor([1, 3, 4])
    cols = torch.randn(3, 6)
    offset = torch.randn(3)
    route = Route("e", 1, idx, cols, offset, key=key)
    x = torch.randn(2, 5, 8)
    span = torch.ones(2, 5, dtype=torch.bool)
    for row, plain in enumerate(span_ends_at_last):
        if not plain:
            span[row, 3:] = False  # the last two tokens are a template's, past the span
    answer_at = torch.zeros(2, 5, dtype=torch.bool)
    answer_at[:, -1] = True
    routing = BatchRouting(decide=lambda features, **_: [Decision(route, "e", 1.0, 1)] * 2, span=span,
                           active=torch.ones(2, 5, dtype=torch.bool), answer_at=answer_at)
    with layer.use(routing), torch.inference_mode():
        out = layer(x)
    own = (x[..., idx] - offset) @ cols
    return out, base(x).detach(), own, cols


def test_the_last_token_reads_the_plain_or_templated_key_and_every_other_token_its_own_input():
    key = torch.randn(2, 3)
    out, base, own, cols = _layer_out(key, [True, False])
    assert torch.allclose(out[:, :-1], base[:, :-1] + own[:, :-1], atol=1e-5)  # other tokens: own input
    assert torch.allclose(out[0, -1], base[0, -1] + key[0] @ cols, atol=1e-5)  # bare prompt: plain key
    assert torch.allclose(out[1, -1], base[1, -1] + key[1] @ cols, atol=1e-5)  # templated: its key
    assert not torch.allclose(out[0, -1], base[0, -1] + own[0, -1], atol=1e-3)


def test_a_templated_prompt_without_a_templated_key_and_a_route_without_keys_read_their_own_input():
    key = torch.randn(1, 3)
    out, base, own, cols = _layer_out(key, [True, False])
    assert torch.allclose(out[0, -1], base[0, -1] + key[0] @ cols, atol=1e-5)
    assert torch.allclose(out[1], base[1] + own[1], atol=1e-5)
    out, base, own, _ = _layer_out(None, [True, False])
    assert torch.allclose(out, base + own, atol=1e-5)


def test_an_edit_keeps_its_keys_through_info_and_the_registry_checks_them():
    m = make_memoir("llama")
    rec = m.edit("who is the chief executive of the company", "jane roe")
    keys = rec.answer_keys
    assert keys.dtype == np.float16 and keys.shape[1] == m.config.k and keys.shape[0] in (1, 2)
    assert np.isfinite(keys).all() and np.abs(keys).sum() > 0
    info = rec.info()
    assert all(isinstance(s, str) for s in info["answer_keys"])
    again = EditRecord.from_info(info, rec.idx, rec.delta, rec.inputs)
    assert np.array_equal(again.answer_keys, keys)
    registry = Registry(m.config.k, m.d_out, m.weights.weight.shape[1])
    registry.check(rec)
    bad = EditRecord.from_info({**info, "answer_keys": np.zeros((1, m.config.k + 1), np.float16)},
                               rec.idx, rec.delta, rec.inputs)
    with pytest.raises(RegistryError, match="answer_keys"):
        registry.check(bad)
    nan = EditRecord.from_info({**info, "answer_keys": np.full((1, m.config.k), np.nan, np.float16)},
                               rec.idx, rec.delta, rec.inputs)
    with pytest.raises(RegistryError, match="answer_keys"):
        registry.check(nan)
    # a record stored before answer keys reads as having none
    old = EditRecord.from_info({k: v for k, v in info.items() if k != "answer_keys"}, rec.idx, rec.delta)
    assert old.answer_keys.size == 0


@pytest.mark.real
def test_on_the_real_model_reworded_prompts_answer_through_the_key_with_the_same_decisions(real):
    from memoir_core.config import MemoirConfig
    from memoir_core.generate import SamplingParams

    m = real
    greedy = SamplingParams(max_new_tokens=8)
    record = m.edit("The mother tongue of Zorblax Quillonberg is", "Finnish", subject="Zorblax Quillonberg")
    try:
        assert record.answer_keys.shape == (2, m.config.k)  # plain and chat forms
        chat = m.encoder.chat([{"role": "user", "content": "What language did Zorblax Quillonberg grow up speaking?"}])
        reworded = ["Zorblax Quillonberg, a native speaker of", "Zorblax Quillonberg spoke the language",
                    "Where Zorblax Quillonberg is from, people speak", chat]
        with_keys = m.generate(reworded, greedy)
        held = m.config
        m.config = MemoirConfig(**{**held.to_dict(), "answer_key": False})
        try:
            without = m.generate(reworded, greedy)
        finally:
            m.config = held
        for form, a, b in zip(reworded, with_keys, without):
            assert a.decision.route is not None and a.decision.route.edit_id == record.id, form
            assert (b.decision.best_edit_id, b.decision.best_overlap) == (a.decision.best_edit_id,
                                                                          a.decision.best_overlap)
        answered = [("Finnish" in out.text) for out in with_keys]
        before = [("Finnish" in out.text) for out in without]
        assert all(answered), [out.text for out in with_keys]
        assert sum(before) < len(before), [out.text for out in without]  # the key is what answers them
    finally:
        m.remove(record.id)

