"""The official `openai` client against /v1 on the tiny server: completions, chat, streaming,
models, errors."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(180)

PROMPT = "what is the capital city of the country"


@pytest.fixture(scope="module")
def client(tiny_server):
    with openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def native(server, prompt, n):
    r = httpx.post(server.url + "/generate", json={"prompt": prompt, "max_new_tokens": n}, timeout=60)
    return r.json()


def test_models(client):
    (model,) = client.models.list().data
    assert model.id == "tiny" and model.owned_by == "memoir"
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_completions_plain_and_streamed_match_generate(client, tiny_server):
    expected = native(tiny_server, PROMPT, 6)
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
    assert out.choices[0].text == expected["text"] and out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 6 and out.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert out.model_extra["memory"] == expected["memory"]  # the memoir extension
    stream = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["text"]
    assert chunks[-1].usage.completion_tokens == 6


def test_completions_n_and_prompt_lists(client):
    out = client.completions.create(model="tiny", prompt=[PROMPT, "jane roe"], n=2, max_tokens=3, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text  # greedy: the same prompt twice, the same answer
    assert out.usage.completion_tokens == 12


def test_chat_plain_and_streamed(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    text = out.choices[0].message.content
    assert out.choices[0].message.role == "assistant" and out.object == "chat.completion"
    assert out.usage.completion_tokens == out.usage.total_tokens - out.usage.prompt_tokens
    assert out.model_extra["memory"]["version"] >= 0
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_errors_use_the_openai_envelope(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny", prompt=PROMPT, temperature=3)
    assert bad.value.status_code == 400 and "temperature" in bad.value.message
    assert bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], presence_penalty=1)
    assert "presence_penalty is not supported" in bad.value.message
