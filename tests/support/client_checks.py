"""Third-party client checks that any memoir server must pass on the default model, whichever
engine generates: tools under tool_choice "required" and a named function (whole and streamed),
a response_format JSON schema, LangChain's bind_tools and with_structured_output. Used by
tests/server/test_chat_clients_real.py (builtin engine) and tests/vllm/test_vllm_server.py,
which import the `client` and `model` fixtures too (each module gives its own `server`)."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}},
          "required": ["name"], "additionalProperties": False}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
ASK_PERSON = [{"role": "user", "content": "Who wrote Romeo and Juliet? Answer in JSON."}]


@pytest.fixture(scope="module")
def client(server):
    """The official client on the module's server."""
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def call_of(message):
    (call,) = message.tool_calls
    return call.function.name, json.loads(call.function.arguments)


def forced_tool_calls(client, model) -> None:
    """tool_choice "required" and a named function: one valid call to get_weather for Paris."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        r = client.chat.completions.create(model=model, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=choice,
                                           max_tokens=40, temperature=0)
        assert r.choices[0].finish_reason == "tool_calls"
        assert call_of(r.choices[0].message) == ("get_weather", {"city": "Paris"})
        chunks = list(client.chat.completions.create(model=model, messages=ASK_WEATHER, tools=[WEATHER],
                                                     tool_choice=choice, max_tokens=40, temperature=0, stream=True))
        calls = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or [] if ch.choices else [])]
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
            [("get_weather", {"city": "Paris"})]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def json_schema_answer(client, model) -> str:
    """A JSON-schema answer, whole and streamed alike; its text."""
    r = client.chat.completions.create(model=model, messages=ASK_PERSON, response_format=PERSON_FORMAT,
                                       max_tokens=40, temperature=0)
    text = r.choices[0].message.content
    value = json.loads(text)
    assert set(value) == {"name"} and isinstance(value["name"], str)
    chunks = client.chat.completions.create(model=model, messages=ASK_PERSON, response_format=PERSON_FORMAT,
                                            max_tokens=40, temperature=0, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    return text


def langchain(url: str, model: str) -> None:
    """ChatOpenAI's bind_tools with a forced tool, and with_structured_output both ways."""
    from langchain_openai import ChatOpenAI

    class Person(BaseModel):
        name: str

    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model=model, temperature=0, max_tokens=40)

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(ASK_WEATHER[0]["content"])
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"] == {"city": "Paris"}
    for method in ("json_schema", "function_calling"):
        person = llm.with_structured_output(Person, method=method).invoke("Who wrote Romeo and Juliet?")
        assert isinstance(person, Person) and person.name
