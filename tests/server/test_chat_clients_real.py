"""Third-party clients against the real server (default model): the official `openai` client with
tools and JSON schemas, LangChain, LiteLLM and lm-eval; every answer and chunk checked against
OpenAI's published OpenAPI schemas; an edit seen through a tool conversation and a JSON answer;
a non-streamed request whose client goes away stops generating (read from the token counter)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from memoir_core.models import resolve
from tests.support import client_checks
from tests.support.client_checks import ASK_WEATHER, PERSON, WEATHER, client, model  # noqa: F401 - fixtures
from tests.support.openai_spec import check

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

FACT = {"prompt": "Who is the CEO of Plandrex Corporation?", "target_new": "Tovin Archell", "id": "plandrex-ceo"}


@pytest.fixture(scope="module")
def server(real_server):
    yield real_server
    httpx.delete(f"{real_server.url}/edits/{FACT['id']}", timeout=60)  # the session's server is shared


def test_openai_client_tools(client, model):
    client_checks.forced_tool_calls(client, model)
    # auto: the model may answer or call; either way the answer is well formed
    r = client.chat.completions.create(model=model, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="auto",
                                       max_tokens=40, temperature=0)
    c = r.choices[0]
    assert (c.finish_reason == "tool_calls") == bool(c.message.tool_calls)
    assert c.message.tool_calls or c.message.content
    streamed = client.chat.completions.create(model=model, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=40,
                                              temperature=0, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert c.message.tool_calls or text == c.message.content


def test_openai_client_json_schema(client, model):
    client_checks.json_schema_answer(client, model)


SPEC_REQUESTS = [
    {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "required"},
    {"messages": ASK_WEATHER, "tools": [WEATHER],
     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"messages": ASK_WEATHER, "tools": [WEATHER]},
    {"messages": ASK_WEATHER,
     "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
    {"messages": ASK_WEATHER, "logprobs": True, "top_logprobs": 3, "n": 2, "temperature": 0.7, "seed": 1},
]


@pytest.mark.parametrize("stream", [False, True])
def test_answers_and_chunks_follow_openais_spec(server, stream):
    with httpx.Client(base_url=server.url + "/v1", timeout=300) as c:
        for body in SPEC_REQUESTS:
            extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
            r = c.post("/chat/completions", json={**body, "max_tokens": 12, **extra})
            assert r.status_code == 200, r.text
            if stream:
                for line in r.text.splitlines():
                    if line.startswith("data: {"):
                        check("CreateChatCompletionStreamResponse", json.loads(line[6:]))
            else:
                check("CreateChatCompletionResponse", r.json())
        for echo in (False, True):
            r = c.post("/completions", json={"prompt": "The capital of France is", "max_tokens": 3, "echo": echo,
                                             "logprobs": 2, **({"stream": True} if stream else {})})
            bodies = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")] \
                if stream else [r.json()]
            for body in bodies:
                check("CreateCompletionResponse", completion_as_spec(body, echo))
        bad = c.post("/chat/completions", json={"messages": ASK_WEATHER, "stream": stream, "tools": [{"x": 1}]})
        assert bad.status_code == 400
        check("ErrorResponse", bad.json())


def completion_as_spec(body: dict, echo: bool) -> dict:
    """The two places where completions knowingly differ from the spec, as OpenAI's own API and vLLM
    do: an echoed prompt's first token has no logprob (null: nothing precedes it), and a streamed
    chunk before the last has finish_reason null (the spec has no stream schema for completions)."""
    for choice in body["choices"]:
        lp = choice["logprobs"]
        if echo and lp and lp["token_logprobs"][:1] == [None]:
            assert lp["top_logprobs"][0] is None
            lp["token_logprobs"][0], lp["top_logprobs"][0] = 0.0, {}
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "length"
    return body


def test_langchain(server, model):
    client_checks.langchain(server.url, model)


def test_litellm(server, model):
    import litellm

    r = litellm.completion(model=f"openai/{model}", api_base=server.url + "/v1", api_key="unused",
                           messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", max_tokens=40,
                           temperature=0)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def _task(tmp: Path, name: str, rows: list[dict], config: str) -> None:
    (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                      f"    test: {tmp / (name + '.jsonl')}\ntest_split: test\n{config}")


def test_lm_eval(server, model, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    capitals = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
                ("Japan", "Tokyo")]
    choices = ["Paris", "Berlin", "Rome", "Madrid", "Tokyo"]
    _task(tmp_path, "memoir_capitals", [{"q": f"The capital of {c} is", "gold": choices.index(a)} for c, a in capitals],
          f"output_type: multiple_choice\ndoc_to_text: '{{{{q}}}}'\ndoc_to_choice: {json.dumps(choices)}\n"
          "doc_to_target: gold\nmetric_list:\n  - metric: acc\n")
    _task(tmp_path, "memoir_echo", [{"q": "Say the word apple.", "a": "apple"}],
          "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: a\n"
          "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\nmetric_list:\n  - metric: exact_match\n")
    tasks = TaskManager(include_path=str(tmp_path))
    tokenizer = str(resolve(None))
    out = lm_eval.simple_evaluate(
        model="local-completions", tasks=["memoir_capitals"], task_manager=tasks,
        model_args=f"model={model},base_url={server.url}/v1/completions,tokenizer={tokenizer},"
                   "tokenized_requests=True,num_concurrent=1,max_retries=1")
    assert out["results"]["memoir_capitals"]["acc,none"] >= 0.6  # the model knows most capitals
    out = lm_eval.simple_evaluate(
        model="local-chat-completions", tasks=["memoir_echo"], task_manager=tasks, apply_chat_template=True,
        model_args=f"model={model},base_url={server.url}/v1/chat/completions,num_concurrent=1,max_retries=1")
    assert "exact_match,none" in out["results"]["memoir_echo"]


def test_an_edit_shows_through_tools_and_json(server, client, model):
    r = httpx.post(server.url + "/edit", json=FACT, timeout=300)
    assert r.status_code == 200, r.text
    lookup = {"type": "function", "function": {"name": "search", "description": "Search the web",
                                                "parameters": {"type": "object", "properties": {
                                                    "query": {"type": "string"}}, "required": ["query"]}}}
    history = [{"role": "user", "content": FACT["prompt"]},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                   "name": "search", "arguments": json.dumps({"query": "Plandrex Corporation CEO"})}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "no results"},
               {"role": "user", "content": FACT["prompt"]}]
    answer = client.chat.completions.create(model=model, messages=history, tools=[lookup], tool_choice="none",
                                            max_tokens=16, temperature=0)
    assert FACT["target_new"] in answer.choices[0].message.content, answer
    fmt = {"type": "json_schema", "json_schema": {"name": "ceo", "schema": {
        "type": "object", "properties": {"ceo": {"type": "string", "maxLength": 40}}, "required": ["ceo"]}}}
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": FACT["prompt"]}],
                                       response_format=fmt, max_tokens=30, temperature=0)
    assert FACT["target_new"] in json.loads(r.choices[0].message.content)["ceo"], r


def metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_goes_away_stops_its_request(server):
    aborted = metric(server, "memoir:request_aborted_total")
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}).encode()
    start = metric(server, "memoir:generation_tokens_total")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 120
        while metric(server, "memoir:generation_tokens_total") < start + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    time.sleep(1.0)  # the disconnect is seen within a poll (50 ms); the sequence leaves before its next step
    stopped = metric(server, "memoir:generation_tokens_total")
    time.sleep(1.0)
    assert metric(server, "memoir:generation_tokens_total") == stopped < start + 1500
    assert metric(server, "memoir:request_aborted_total") == aborted + 1
