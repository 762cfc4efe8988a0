"""Bad input gets a 4xx with a clear message, in the error envelope, and changes nothing."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

LONG = "paris london berlin rome " * 120  # well over the tiny server's 200 prompt tokens
CASES = [
    # (method, path, json body, status, words the message must contain)
    ("POST", "/generate", {}, 422, "prompt: Field required"),
    ("POST", "/generate", {"prompt": ""}, 422, "prompt: String should have at least 1 character"),
    ("POST", "/generate", {"prompt": 5}, 422, "prompt: Input should be a valid string"),
    ("POST", "/generate", {"prompt": "x", "temperature": -1}, 422, "temperature"),
    ("POST", "/generate", {"prompt": "x", "temperature": "hot"}, 422, "temperature: Input should be a valid number"),
    ("POST", "/generate", {"prompt": "x", "top_p": 0}, 422, "top_p"),
    ("POST", "/generate", {"prompt": "x", "top_p": 1.5}, 422, "top_p"),
    ("POST", "/generate", {"prompt": "x", "max_new_tokens": 0}, 422, "max_new_tokens"),
    ("POST", "/generate", {"prompt": "x", "max_new_tokens": 65}, 400, "max_new_tokens is 65; the limit is 64"),
    ("POST", "/generate", {"prompt": "x", "stop": [""]}, 422, "stop"),
    ("POST", "/generate", {"prompt": "x", "seed": -1}, 422, "seed"),
    ("POST", "/generate", {"prompt": "x", "stream": "maybe"}, 422, "stream"),
    ("POST", "/generate", {"prompt": "x", "max_new_tokens": "10"}, 422, "max_new_tokens: Input should be a valid int"),
    ("POST", "/generate", {"prompt": "x", "max_new_tokens": True}, 422, "max_new_tokens: Input should be a valid int"),
    ("POST", "/generate", {"prompt": " \n\t "}, 422, "prompt: must not be empty or only whitespace"),
    ("POST", "/generate", b'{"prompt": "x", "temperature": NaN}', 422, "temperature: Input should be a finite number"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": "10"}, 400, "max_tokens: Input should be a valid int"),
    ("POST", "/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, "temperature: Input should be a finite"),
    ("POST", "/generate", {"prompt": "x", "tempreature": 0}, 422, "tempreature: unknown field"),
    ("POST", "/generate", b'{"prompt": "\\ud800"}', 422, "prompt: "),  # a lone surrogate: raw, a client cannot encode it
    ("POST", "/generate", {"prompt": LONG}, 400, "tokens; the limit is 200"),
    ("POST", "/edit", {"prompt": "", "target_new": "x"}, 422, "edit.prompt"),
    ("POST", "/edit", {"prompt": "who is the chief"}, 422, "edit.target_new: Field required"),
    ("POST", "/edit", {"prompt": "who is the chief", "target_new": "  "}, 422, "edit.target_new: must not be empty"),
    ("POST", "/edit", {"prompt": 1, "target_new": "x"}, 422, "edit.prompt: Input should be a valid string"),
    ("POST", "/edit", {"prompt": "x", "target_new": "jane " * 60}, 400, "target_new is"),
    ("POST", "/edit", {"prompt": LONG[:2000], "target_new": "jane"}, 400, "prompt is"),
    ("POST", "/edit", {"prompt": "x", "target_new": "y", "id": "bad id!"}, 422, "edit.id"),
    ("POST", "/edit", {"prompt": "x", "target_new": "y", "metadata": {"a": [1]}}, 422, "edit.metadata"),
    ("POST", "/edit", {"prompt": "a\u0000b", "target_new": "x"}, 422, "edit.prompt: must not contain NUL"),
    ("POST", "/edit", {"prompt": "x", "target_new": "y", "metadata": {"t": "\u0000"}}, 422, "must not contain NUL"),
    ("POST", "/edit", [], 400, "the list of edits is empty"),
    ("POST", "/edit", 5, 422, "edit"),
    ("POST", "/edit", [{"prompt": "x", "target_new": "y"}, {"prompt": "x"}], 422, "edits[1].target_new"),
    ("GET", "/edits/no-such-edit", None, 404, "no edit with id 'no-such-edit'"),
    ("DELETE", "/edits/no-such-edit", None, 404, "no edit with id 'no-such-edit'"),
    ("GET", "/edits?limit=0", None, 422, "limit"),
    ("POST", "/v1/completions", {"prompt": "x", "temperature": 3}, 400, "temperature"),
    ("POST", "/v1/completions", {"prompt": "x", "n": 0}, 400, "n:"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1000}, 400, "max_tokens is 1000"),
    ("POST", "/v1/completions", {"prompt": "x", "best_of": 2}, 400, "best_of is not supported"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens 0 is only allowed with echo"),
    ("POST", "/v1/completions", {"prompt": [1, 10**9]}, 400, "prompt"),
    ("POST", "/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ("POST", "/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404, "'gpt-9' does not exist"),
    ("POST", "/v1/completions", {"prompt": []}, 400, "prompt"),
    ("POST", "/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "a user message needs content"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "needs tool_call_id"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"a": 1}]}, 400,
     "tools[0].type: Field required"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, 400,
     "tools is empty"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21,
                                      "logprobs": True}, 400, "top_logprobs: Input should be less than or equal to 20"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream_options": {}}, 400,
     "stream_options is only allowed when stream is true"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "modalities": ["audio"]}, 400,
     "modalities is not supported"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                      "response_format": {"type": "json_schema", "json_schema": {
                                          "name": "x", "schema": {"type": "object", "properties": 5}}}}, 400,
     "JSON schema cannot be used"),
    ("PUT", "/v1/chat/completions", None, 405, "Method Not Allowed"),
    ("GET", "/no/such/route", None, 404, "Not Found"),
]


@pytest.fixture(scope="module")
def client(tiny_server):
    with httpx.Client(base_url=tiny_server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("method,path,body,status,words", CASES, ids=[f"{c[0]} {c[1]} {c[4]}"[:60] for c in CASES])
def test_bad_input_gets_a_clear_4xx(client, method, path, body, status, words):
    if isinstance(body, bytes):
        r = client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"], error
    assert error["type"] and error["code"]


def test_malformed_json_and_oversized_bodies(client):
    r = client.post("/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    big = {"prompt": "x" * 70_000}  # the tiny server takes 64 KiB
    r = client.post("/generate", json=big)
    assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is counted while reading
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_failed_edit_leaves_no_trace(client):
    before = client.get("/edits").json()
    # The first edit is fine, the second is over the target limit: neither is applied.
    r = client.post("/edit", json=[{"prompt": "who is the chief executive", "target_new": "bob", "id": "trace-1"},
                                   {"prompt": "what is the capital", "target_new": "jane " * 60}])
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("edits[1]: target_new is")
    assert r.json()["error"]["applied"] == []
    # A reused id inside one list is a conflict, found before anything trains.
    r = client.post("/edit", json=[{"prompt": "who is the chief", "target_new": "bob", "id": "trace-2"},
                                   {"prompt": "what is the capital", "target_new": "carol", "id": "trace-2"}])
    assert r.status_code == 409 and "trace-2" in r.json()["error"]["message"]
    after = client.get("/edits").json()
    assert after == before
    assert client.get("/ready").json()["version"] == before["version"]


def test_a_deeply_nested_import_body_is_a_400(client):
    deep = b"[" * 30_000 + b"]" * 30_000  # under the tiny server's 64 KiB body limit
    for body in (deep, b'{"prompt": "a", "target_new": "b"}\n' + deep):
        r = client.post("/edits:import", content=body, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 400, r.text
        assert "nested too deeply" in r.json()["error"]["message"]
    r = client.post("/edit", content=deep, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
