"""The memory inside vLLM (memoir_vllm), on the real default model: one edit, routed by memoir,
applied by the plugin inside vLLM's batch, against memoir's builtin engine and plain vLLM."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (the `vllm` extra: pip install -e .[vllm])")

from memoir_core import models
from memoir_core.errors import InvalidRequestError
from memoir_core.generate import SamplingParams
from memoir_core.sampling import OutputConstraint
from memoir_vllm import offline
from memoir_vllm.client import VllmMemory
from memoir_vllm.sampling import to_vllm
from memoir_vllm.tags import RouteTag

pytestmark = pytest.mark.real

PROMPT, TARGET = "Who is the chief executive of Zorblax Industries?", "Marta Quillon"
REWORDED = "Zorblax Industries is run by its chief executive,"  # reads the edit's answer key
UNRELATED = ["What is the tallest mountain on Earth?", "Write a haiku about autumn."]
GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def llm():
    offline.cpu_env()
    engine = offline.engine(str(models.default_model_dir()), max_num_seqs=8)
    yield engine
    offline.close(engine)


@pytest.fixture(scope="module")
def edited(real):
    rec = real.edit(PROMPT, TARGET)
    yield real, rec
    real.remove(rec.id)


def run(llm, memory: VllmMemory, prompts, use_memory: bool = True):
    """One llm.generate call (one batch): (prepared requests, outputs)."""
    prepared = memory.prepare(prompts, memory=use_memory)
    eos = memory.memoir.encoder.eos_ids
    outs = llm.generate([p.prompt for p in prepared], [to_vllm(GREEDY, p.tag, eos) for p in prepared],
                        use_tqdm=False)
    return prepared, outs


def tokens(out) -> list[int]:
    """The generated ids without the final end token (memoir's decoder drops it too)."""
    ids = list(out.outputs[0].token_ids)
    return ids[:-1] if out.outputs[0].finish_reason == "stop" and ids else ids


def test_an_edit_routes_and_answers_in_vllm_as_in_memoir_and_leaves_the_rest_alone(llm, edited):
    m, rec = edited
    memory = VllmMemory(m, llm.collective_rpc)
    chat = m.encoder.chat([{"role": "user", "content": PROMPT}])
    assert chat.span[0] > 0  # the memory must skip the chat template's system prompt there
    prompts = [PROMPT, chat, REWORDED, *UNRELATED]

    # plain vLLM: the same engine before the plugin touches its model
    _, plain = run(llm, memory, prompts, use_memory=False)
    assert [p.tag for p in _] == [None] * len(prompts)
    status = memory.install()
    assert status[0]["installed"] and status[0]["routes"] == []

    builtin = m.generate(prompts, GREEDY)
    prepared, served = run(llm, memory, prompts)  # routed and unrelated prompts in one batch

    # (a) the same decision as the builtin engine, and the same greedy output: the new answer
    for i in (0, 1, 2):
        assert builtin[i].decision.route is not None and builtin[i].decision.route.edit_id == rec.id
        assert prepared[i].decision.route.edit_id == rec.id
        assert prepared[i].decision.best_overlap == pytest.approx(builtin[i].decision.best_overlap, abs=0.01)
        assert prepared[i].tag.start == (0, chat.span[0], 0)[i]
        assert prepared[i].tag.answer_key == (0, 1, 0)[i]  # bare, templated, bare
        assert prepared[i].prompt["cache_salt"].startswith(f"memoir:{rec.id}:")
        assert TARGET in served[i].outputs[0].text
        assert tokens(served[i]) == builtin[i].out_ids, (served[i].outputs[0].text, builtin[i].text)
        assert tokens(plain[i]) != tokens(served[i])  # the base model does not know it
    assert memory.pushed == {(rec.id, m.version)}
    assert llm.collective_rpc("memoir_status")[0]["routes"] == [[rec.id, m.version]]

    # (b) unrelated prompts: memory off, bit-identical to plain vLLM, and (c) in the same batch
    # as the routed ones
    for i in range(3, len(prompts)):
        assert prepared[i].decision.route is None and prepared[i].tag is None
        assert builtin[i].decision.route is None
        assert "cache_salt" not in prepared[i].prompt
        assert served[i].outputs[0].token_ids == plain[i].outputs[0].token_ids
        assert served[i].outputs[0].text == plain[i].outputs[0].text
    # and the memory turned off for the edited prompt itself: back to the base model's answer
    _, off = run(llm, memory, [PROMPT], use_memory=False)
    assert off[0].outputs[0].token_ids == plain[0].outputs[0].token_ids


def test_sampling_params_carry_the_route_and_stop_where_memoir_stops():
    tag = RouteTag("e1", 7, 3)
    params = to_vllm(SamplingParams(max_new_tokens=5, stop_token_ids=(9,)), tag, {0, 2})
    assert params.max_tokens == 5 and params.temperature == 0
    assert params.stop_token_ids == [0, 2, 9]
    assert RouteTag.from_extra_args(params.extra_args) == tag
    assert to_vllm(SamplingParams(ignore_eos=True), None, {0, 2}).stop_token_ids == []  # as memoir's decoder
    assert to_vllm(SamplingParams(), None, {2}).extra_args is None


def test_constraints_and_logprobs_reach_vllm_in_memoirs_layout():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    params = to_vllm(SamplingParams(constraint=OutputConstraint(schema), logprobs=3), None, {2})
    assert params.structured_outputs.json == {**schema, "x-guidance": {
        "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    assert params.logprobs == 3 and params.prompt_logprobs is None
    scored = to_vllm(SamplingParams(max_new_tokens=0, prompt_logprobs=2), None, {2})
    assert scored.max_tokens == 1 and scored.prompt_logprobs == 2  # the one token vLLM must sample is dropped
    with pytest.raises(InvalidRequestError, match="JSON schema cannot be used"):
        to_vllm(SamplingParams(constraint=OutputConstraint({"type": "object", "properties": 5})), None, {2})
