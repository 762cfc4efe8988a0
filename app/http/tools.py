"""Tool calling: tool definitions into the prompt, tool calls out of the output.

Definitions reach the model through its chat template (`apply_chat_template(tools=...)`) when
the template reads `tools`; a template that does not (SmolLM2's) gets them in the system
message, in the Hermes format most small instruction models have seen. The model answers a
call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` or as that JSON object alone.
With tool_choice "required" or a named function, decoding is constrained to that JSON object
with the function's own parameter schema, so the call is always valid.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from memoir_core.sampling import OutputConstraint

from .openai_protocol import ChatCompletionRequest, FunctionCall, NamedToolChoice, ToolCall, ToolDef

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_OPEN = "<tool_call>"

_SYSTEM = ("You may call one or more functions to assist with the user query. You are provided with "
           "function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
           "For each function call, return a json object with function name and arguments within "
           "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, "
           "\"arguments\": <args-json-object>}}\n</tool_call>")


def template_reads_tools(tokenizer) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def _definition(tool: ToolDef) -> dict[str, Any]:
    return {"type": "function", "function": tool.function.model_dump(exclude_none=True)}


def _call_text(call: ToolCall) -> str:
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        arguments = call.function.arguments
    return f"{_OPEN}\n{json.dumps({'name': call.function.name, 'arguments': arguments})}\n</tool_call>"


def chat_messages(body: ChatCompletionRequest, reads_tools: bool) -> tuple[list[dict[str, Any]], list | None]:
    """The messages for the chat template and the tools to pass it (None: already in the messages)."""
    messages: list[dict[str, Any]] = []
    for m in body.messages:
        # "developer" is the newer name of "system"; most chat templates know only the latter.
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            if reads_tools:
                msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.function.name, "arguments": _loads(c.function.arguments)}} for c in m.tool_calls]
            else:
                msg["content"] = "\n".join([msg["content"], *map(_call_text, m.tool_calls)]).strip()
        if m.role == "tool":
            if reads_tools:
                msg["tool_call_id"] = m.tool_call_id
            else:
                msg["content"] = f"<tool_response>\n{msg['content']}\n</tool_response>"
        messages.append(msg)
    if not body.tools_on:
        return messages, None
    tools = [_definition(t) for t in body.tools or []]
    if reads_tools:
        return messages, tools
    listing = _SYSTEM.format(tools="\n".join(json.dumps(t) for t in tools))
    if messages and messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{listing}"}
    else:
        messages.insert(0, {"role": "system", "content": listing})
    return messages, None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def constraint(body: ChatCompletionRequest) -> OutputConstraint | None:
    """The JSON a call must be under tool_choice "required" or a named function; None otherwise."""
    if not body.tools_on or body.tool_choice in (None, "auto"):
        return None
    tools = body.tools or []
    if isinstance(body.tool_choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == body.tool_choice.function.name]
    options = [{"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": _closed(t)},
                "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return OutputConstraint(options[0] if len(options) == 1 else {"anyOf": options})


def _closed(tool: ToolDef) -> dict[str, Any]:
    """The parameters' schema, with no properties beyond the declared ones unless it says otherwise:
    a function takes its parameters, and a small model left free wanders into inventing others."""
    schema = dict(tool.function.parameters or {"type": "object"})
    if schema.get("type") == "object" and schema.get("properties") and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def parse(text: str, body: ChatCompletionRequest) -> tuple[str | None, list[ToolCall]]:
    """(the content left, the tool calls) of an answer; calls only to functions in `tools`."""
    names = {t.function.name for t in body.tools or []}
    calls, spans = [], []
    for match in _CALL.finditer(text):
        call = _call(match.group(1), names)
        if call is not None:
            calls.append(call)
            spans.append(match.span())
    if not calls:
        stripped = text.strip()
        call = _call(stripped, names) if stripped.startswith("{") else None
        return (None, [call]) if call is not None else (text, [])
    rest, last = [], 0
    for a, b in spans:
        rest.append(text[last:a])
        last = b
    rest.append(text[last:])
    content = "".join(rest).strip()
    return content or None, calls


def _call(text: str, names: set[str]) -> ToolCall | None:
    try:
        data = json.JSONDecoder().raw_decode(text.strip())[0]
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _loads(arguments)
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                    function=FunctionCall(name=data["name"], arguments=json.dumps(arguments)))


def may_be_call(text: str) -> bool:
    """Whether a streamed answer that starts with `text` may turn out to be a tool call (hold it back)."""
    head = text.lstrip()
    return head.startswith("{") or _OPEN.startswith(head[: len(_OPEN)]) if head else True
