"""`memoir serve --engine vllm` on the real default model, over HTTP: memoir's API, edit flow and
memory attribution in front of vLLM's engine with the memory inside it. An edit made through
/edit changes the chat answer (/v1/chat/completions) and /generate's, an unrelated prompt
answers exactly as before, and deleting the edit brings the old answer back. The request
contract is the builtin engine's: logprobs (chat, completions, echoed prompts) equal the builtin
engine's, a JSON-schema answer is byte for byte the builtin engine's, forced tool calls and
LangChain work as they do there (tests/support/client_checks.py)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (the `vllm` extra: pip install -e .[vllm])")

from memoir_core.constraints import Matcher
from memoir_core.generate import GenSequence
from memoir_core.sampling import OutputConstraint, SamplingParams
from tests.support import client_checks
from tests.support.client_checks import client, model  # noqa: F401 - fixtures
from tests.support.server_utils import THREADS, Server, free_port

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

FACT = ("edit-zorblax", "Who is the chief executive of Zorblax Industries?", "Marta Quillon")
UNRELATED = "The largest planet in the solar system is"
TOKENS = 12


@pytest.fixture(scope="module")
def server():
    port = free_port()
    s = Server(["-m", "memoir_cli.main", "serve", "--port", str(port), "--threads", THREADS, "--engine", "vllm",
                "--log-level", "warning"],
               {"MEMOIR_THREADS": THREADS, "VLLM_CPU_KVCACHE_SPACE": "1"}, port=port)
    yield s.start(600)
    s.stop()


def test_an_edit_is_visible_through_the_chat_api_on_the_vllm_engine(server):
    edit_id, prompt, target = FACT
    with httpx.Client(base_url=server.url, timeout=300) as c:
        assert c.get("/ready").json()["engine"] == "vllm"
        def generate(p: str) -> dict:
            r = c.post("/generate", json={"prompt": p, "max_new_tokens": TOKENS})
            assert r.status_code == 200, r.text
            return r.json()

        def chat() -> dict:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                     "max_tokens": TOKENS, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()

        before, unrelated_before, chat_before = generate(prompt), generate(UNRELATED), chat()
        assert target not in before["text"] and not before["memory"]["on"]
        assert target not in chat_before["choices"][0]["message"]["content"]

        r = c.post("/edit", json={"prompt": prompt, "target_new": target, "id": edit_id})
        assert r.status_code == 200, r.text
        version = r.json()["edits"][0]["version"]

        answered, after = chat(), generate(prompt)
        assert target in answered["choices"][0]["message"]["content"], answered
        assert answered["memory"]["on"] and answered["memory"]["edit_id"] == edit_id
        assert answered["memory"]["version"] == version
        assert target in after["text"] and after["memory"]["edit_id"] == edit_id, (after, server.output())
        unrelated = generate(UNRELATED)
        assert unrelated["text"] == unrelated_before["text"] and not unrelated["memory"]["on"]

        assert c.delete(f"/edits/{edit_id}").status_code == 200
        rolled_back = generate(prompt)
        assert rolled_back["text"] == before["text"] and not rolled_back["memory"]["on"]


# -- the request contract, against the builtin engine (memoir's library on the same model) --------

LOGPROB_TOLERANCE = 1e-3
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]
COMPLETION = "The capital of France is"


def builtin(real, prompt, params: SamplingParams) -> GenSequence:
    """One sequence through the builtin engine's decoder, memory off (no edit is about these
    prompts), with the matcher its engine thread gives a constrained one."""
    seq = GenSequence(prompt.ids, prompt.span, params, tail=prompt.tail)
    if params.constraint is not None:
        tok = real.encoder.tokenizer
        seq.matcher = Matcher(params.constraint, tok, tok.eos_token_id, real.model.config.vocab_size)
    real.decoder(memory=False).run([seq])
    return seq


def piece(real, token: int) -> str:
    return real.encoder.tokenizer.decode([token])


def same_logprob(served: float | None, expected: float | None) -> bool:
    if served is None or expected is None:
        return served is expected
    return abs(served - expected) <= LOGPROB_TOLERANCE


def same_top(real, served: dict[str, float], expected) -> bool:
    want = {piece(real, t): v for t, v in expected}
    return served.keys() == want.keys() and all(same_logprob(served[k], want[k]) for k in want)


def test_chat_logprobs_equal_the_builtin_engines(real, client, model):
    r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3)
    ref = builtin(real, real.encoder.chat(CHAT), SamplingParams(max_new_tokens=8, logprobs=3))
    served = r.choices[0].logprobs.content
    assert r.choices[0].message.content == ref.text
    assert [p.token for p in served] == [piece(real, t.token) for t in ref.logprobs]
    for p, t in zip(served, ref.logprobs, strict=True):
        assert same_logprob(p.logprob, t.logprob), (p, t)
        assert same_top(real, {x.token: x.logprob for x in p.top_logprobs}, t.top), (p, t)
    streamed = client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                              top_logprobs=3, stream=True)
    chunks = [p for ch in streamed if ch.choices and ch.choices[0].logprobs for p in ch.choices[0].logprobs.content]
    assert [p.token for p in chunks] == [p.token for p in served]
    assert all(same_logprob(a.logprob, b.logprob) for a, b in zip(chunks, served))


def test_completion_logprobs_with_the_echoed_prompt_equal_the_builtin_engines(real, client, model):
    prompt = real.encoder.plain(COMPLETION)
    ref = builtin(real, prompt, SamplingParams(max_new_tokens=4, logprobs=2, prompt_logprobs=2))
    r = client.completions.create(model=model, prompt=COMPLETION, max_tokens=4, temperature=0, logprobs=2, echo=True)
    lp = r.choices[0].logprobs
    expected = ref.prompt_logprobs + ref.logprobs
    assert r.choices[0].text == COMPLETION + ref.text
    assert lp.tokens == [piece(real, t.token) for t in expected]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    for value, top, t in zip(lp.token_logprobs[1:], lp.top_logprobs[1:], expected[1:], strict=True):
        assert same_logprob(value, t.logprob) and same_top(real, top, t.top), (value, top, t)
    # scoring only (lm-eval's loglikelihood): the prompt's logprobs and no new token
    scored = client.completions.create(model=model, prompt=COMPLETION, max_tokens=0, logprobs=0, echo=True)
    assert scored.choices[0].text == COMPLETION and scored.usage.completion_tokens == 0
    assert all(same_logprob(v, t.logprob)
               for v, t in zip(scored.choices[0].logprobs.token_logprobs, ref.prompt_logprobs, strict=True))


def test_a_json_schema_answer_is_the_builtin_engines_byte_for_byte(real, client, model):
    text = client_checks.json_schema_answer(client, model)  # whole and streamed alike
    ref = builtin(real, real.encoder.chat(client_checks.ASK_PERSON),
                  SamplingParams(max_new_tokens=40, logprobs=0, constraint=OutputConstraint(client_checks.PERSON)))
    assert text == ref.text
    # the documented difference: vLLM masks the logits before it takes logprobs, so a constrained
    # token's logprob is renormalised over the allowed tokens (higher); the builtin engine's is not
    r = client.chat.completions.create(model=model, messages=client_checks.ASK_PERSON, max_tokens=40, temperature=0,
                                       response_format=client_checks.PERSON_FORMAT, logprobs=True)
    served = r.choices[0].logprobs.content
    assert [p.token for p in served] == [piece(real, t.token) for t in ref.logprobs]
    gains = [p.logprob - t.logprob for p, t in zip(served, ref.logprobs, strict=True)]
    assert min(gains) >= -LOGPROB_TOLERANCE and max(gains) > 0.1, gains
    r = client.chat.completions.create(model=model, messages=client_checks.ASK_PERSON, max_tokens=40, temperature=0,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": 5}}}
    with pytest.raises(openai.BadRequestError, match="JSON schema cannot be used"):
        client.chat.completions.create(model=model, messages=CHAT, max_tokens=4, response_format=bad)


def test_forced_tool_calls_and_langchain(server, client, model):
    client_checks.forced_tool_calls(client, model)
    client_checks.langchain(server.url, model)
