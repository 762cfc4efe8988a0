"""The chat API's protocol on the tiny server: neutral fields, tools and JSON schemas enforced by
constrained decoding (valid whatever a random model prefers), logprobs, echo, token prompts,
the utility routes and who sees edit ids. Tools (their definitions outgrow the tiny model's
context) and cancellation on disconnect are tested on the real model (test_chat_clients_real.py)."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tests.support.server_utils import tiny

pytestmark = pytest.mark.timeout(180)
USER = [{"role": "user", "content": "what is the capital city of the country"}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


ADMIN = {"authorization": "Bearer admin-secret-0123456789"}


@pytest.fixture(scope="module")
def server():
    # keys, so edit ids are hidden from client keys; prompts long enough for tool definitions
    server = tiny({"MEMOIR_API_KEY": "user-secret-0123456789", "MEMOIR_ADMIN_KEY": "admin-secret-0123456789",
                   "MEMOIR_MAX_PROMPT_TOKENS": "2000", "MEMOIR_MAX_NEW_TOKENS": "128"}).start(120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as c:
        yield c


def chat(client, **body):
    r = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 40, **body})
    assert r.status_code == 200, r.text
    return r


def test_neutral_fields_are_accepted_and_named(client):
    neutral = {"store": False, "metadata": {"a": "b"}, "service_tier": "auto", "parallel_tool_calls": True,
               "prompt_cache_key": "k", "safety_identifier": "s", "reasoning_effort": "low", "modalities": ["text"],
               "verbosity": "medium", "prediction": None, "web_search_options": None, "audio": None,
               "tool_choice": "none", "logprobs": True, "top_logprobs": 0}
    r = chat(client, **neutral, max_tokens=3)
    ignored = set(r.headers["x-memoir-ignored-fields"].split(", "))
    assert {"metadata", "service_tier", "prompt_cache_key", "reasoning_effort", "modalities"} <= ignored
    message = r.json()["choices"][0]["message"]
    assert message["refusal"] is None and "tool_calls" not in message
    r = client.post("/v1/chat/completions", json={"messages": USER, "stream": True, "max_tokens": 2,
                                                  "stream_options": {"include_obfuscation": False}})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


def test_validation_errors_name_fields_not_pydantic_types(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]})
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and message.startswith("messages[0].content: ")
    for internal in ("function-after", "constrained-str", "list[", "TextPart"):
        assert internal not in message, message


def test_json_schema_and_json_object_are_enforced(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": SCHEMA}}
    for seed in (1, 2):
        c = chat(client, response_format=fmt, temperature=1.0, seed=seed, max_tokens=60).json()["choices"][0]
        assert c["finish_reason"] == "stop", c
        value = json.loads(c["message"]["content"])
        assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    c = chat(client, response_format={"type": "json_object"}, temperature=1.0, seed=5, max_tokens=60).json()
    if c["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(c["choices"][0]["message"]["content"]), dict)


def test_chat_logprobs(client):
    c = chat(client, logprobs=True, top_logprobs=20, max_tokens=5, temperature=0, min_tokens=5).json()["choices"][0]
    content = c["logprobs"]["content"]
    assert len(content) == 5 and c["logprobs"]["refusal"] is None
    for t in content:
        tops = [x["logprob"] for x in t["top_logprobs"]]
        assert len(tops) == 20 and tops == sorted(tops, reverse=True) and t["logprob"] <= 0
        assert t["logprob"] == pytest.approx(tops[0], abs=1e-5)  # greedy: the sampled token is the best
    if "\ufffd" not in c["message"]["content"]:  # a random model may split a character over tokens
        assert "".join(t["token"] for t in content) == c["message"]["content"]


def test_echo_scores_token_prompts(client):
    ids = client.post("/tokenize", json={"prompt": "one two three four"}).json()["tokens"]
    r = client.post("/v1/completions", json={"prompt": [ids, ids[:2]], "max_tokens": 0, "echo": True, "logprobs": 2})
    assert r.status_code == 200, r.text
    first, second = r.json()["choices"]
    lp = first["logprobs"]
    assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v <= 0 for v in lp["token_logprobs"][1:]) and all(len(t) == 2 for t in lp["top_logprobs"][1:])
    assert first["text"] == "one two three four" and first["finish_reason"] == "length"
    assert second["logprobs"]["token_logprobs"][1] == pytest.approx(lp["token_logprobs"][1], abs=1e-4)
    # with a generated token: lm-eval's loglikelihood request
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1,
                                             "temperature": 0}).json()
    assert len(r["choices"][0]["logprobs"]["tokens"]) == len(ids) + 1


def test_vllm_extras(client):
    base = {"prompt": "one two", "max_tokens": 8, "temperature": 0}
    plain = client.post("/v1/completions", json=base).json()["choices"][0]["text"]
    assert client.post("/v1/completions", json={**base, "top_k": 1, "min_tokens": 8, "ignore_eos": True,
                                                 "stop_token_ids": []}).status_code == 200
    penalised = client.post("/v1/completions", json={**base, "repetition_penalty": 5.0}).json()["choices"][0]["text"]
    assert penalised != plain or len(set(plain.split())) == len(plain.split())
    cont = chat(client, messages=USER + [{"role": "assistant", "content": "the capital"}],
                continue_final_message=True, add_generation_prompt=False, max_tokens=3)
    assert cont.json()["choices"][0]["message"]["role"] == "assistant"


def test_utility_routes(client):
    ids = client.post("/tokenize", json={"prompt": "one two"}).json()
    assert ids["count"] == len(ids["tokens"]) > 0
    assert client.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"] == "one two"
    assert client.post("/detokenize", json={"tokens": [10**6]}).status_code == 400
    assert client.get("/version").json()["version"]
    r = client.post("/v1/embeddings", json={"input": ["one two", "three"]}).json()
    a, b = (d["embedding"] for d in r["data"])
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-4) and a != b and r["usage"]["prompt_tokens"] > 2


def test_only_admin_keys_see_edit_ids(client):
    edit = client.post("/edit", json={"prompt": "one two three", "target_new": "four", "id": "e1"})
    assert edit.status_code == 200, edit.text
    body = {"prompt": "one two three", "max_new_tokens": 2}
    user_key = {"authorization": "Bearer user-secret-0123456789"}
    user = client.post("/generate", json=body, headers=user_key).json()["memory"]
    admin = client.post("/generate", json=body).json()["memory"]
    assert admin["best_edit_id"] == "e1" and admin["overlap"] > 0
    assert user["best_edit_id"] is None and user["edit_id"] is None and user["overlap"] is None
    assert user["on"] == admin["on"] and user["version"] == admin["version"] == edit.json()["version"]
    chat = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2},
                       headers={"authorization": "Bearer user-secret-0123456789"}).json()
    assert chat["memory"]["best_edit_id"] is None and chat["choices"][0]["memory"]["best_edit_id"] is None
