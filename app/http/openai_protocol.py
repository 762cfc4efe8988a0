"""Request models of the OpenAI-compatible routes, with OpenAI's field names (responses: openai_responses.py).

Lenient on what does not change the output, strict on what would: a field of OpenAI's spec
that memoir ignores is accepted and named in the X-Memoir-Ignored-Fields header (`ignored()`);
one that would change the output and is not implemented is refused with a 400 naming it
(`unsupported()`); an unknown field is refused. vLLM's common extras are implemented.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from .protocol import MAX_SEED, MAX_TEXT_CHARS, AnyText, PromptText, Stops

MAX_TOKEN_ID = 10_000_000
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1, max_length=200_000)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = False
    include_obfuscation: bool | None = None  # padding against side channels; nothing to pad here


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, description="default 1; 0 is greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    n: StrictInt | None = Field(None, ge=1, le=16)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stops = None
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    user: str | None = Field(None, max_length=256)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # OpenAI fields that never change the output here
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = Field(None, max_length=32)
    prompt_cache_key: str | None = Field(None, max_length=1024)
    safety_identifier: str | None = Field(None, max_length=256)
    # vLLM's extras
    top_k: int | None = Field(None, ge=-1, le=1_000_000, description="vLLM: keep the k most likely tokens; -1/0 off")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="vLLM: 1 is off")
    min_tokens: int | None = Field(None, ge=0, le=1_000_000, description="vLLM: no end before this many tokens")
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(max_length=64)] | None = None
    ignore_eos: bool | None = Field(None, description="vLLM: go on past the end-of-sequence token")

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def unsupported(self) -> list[tuple[str, bool]]:
        """(parameter, set to something memoir does not do)"""
        return [("presence_penalty", bool(self.presence_penalty)), ("frequency_penalty", bool(self.frequency_penalty)),
                ("logit_bias", bool(self.logit_bias))]

    def ignored(self) -> list[str]:
        """Fields set to something that memoir accepts but that does not change its answer."""
        options = self.stream_options
        return [name for name, used in [
            ("store", bool(self.store)), ("metadata", bool(self.metadata)), ("service_tier", self.service_tier),
            ("prompt_cache_key", self.prompt_cache_key), ("safety_identifier", self.safety_identifier),
            ("user", self.user), ("stream_options.include_obfuscation", options and options.include_obfuscation),
        ] if used]


class CompletionRequest(OpenAIRequest):
    prompt: (PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=16)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1, max_length=16)])
    max_tokens: StrictInt | None = Field(16, ge=0, le=1_000_000, description="0 with echo: only score the prompt")
    echo: bool | None = False
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    best_of: StrictInt | None = Field(None, ge=1, le=16)
    suffix: str | None = Field(None, max_length=MAX_TEXT_CHARS)

    @model_validator(mode="after")
    def _zero_tokens_need_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 is only allowed with echo (to score the prompt)")
        return self

    def unsupported(self) -> list[tuple[str, bool]]:
        return super().unsupported() + [("best_of", (self.best_of or 1) > 1), ("suffix", bool(self.suffix))]

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: AnyText


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    arguments: str = Field(max_length=MAX_TEXT_CHARS, description="JSON text")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


Content = AnyText | Annotated[list[TextPart], Field(max_length=64)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: Annotated[list[ToolCall], Field(max_length=64)] | None = None
    tool_call_id: str | None = Field(None, max_length=256)
    refusal: str | None = Field(None, max_length=MAX_TEXT_CHARS)

    @model_validator(mode="after")
    def _shape(self):
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.refusal)):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        return self


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_tokens: StrictInt | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDef], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None  # deprecated by OpenAI: refused when set
    function_call: str | dict[str, Any] | None = None
    # OpenAI fields that do not change this model's output (it has no reasoning and no audio)
    reasoning_effort: str | None = Field(None, max_length=32)
    prediction: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: Annotated[list[Literal["text", "audio"]], Field(max_length=2)] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # vLLM's extras
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="vLLM: extra variables of the template")
    continue_final_message: bool | None = Field(None, description="vLLM: continue the last (assistant) message")
    add_generation_prompt: bool | None = Field(None, description="vLLM: default true, false with continue")

    @model_validator(mode="after")
    def _choices(self):
        if isinstance(self.tool_choice, NamedToolChoice) or self.tool_choice == "required":
            if not self.tools:
                raise ValueError("tool_choice names a tool or requires one, but tools is empty")
            if isinstance(self.tool_choice, NamedToolChoice) and \
                    self.tool_choice.function.name not in {t.function.name for t in self.tools}:
                raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs the last message to be the assistant's")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return self

    def unsupported(self) -> list[tuple[str, bool]]:
        return super().unsupported() + [
            ("functions", bool(self.functions)), ("function_call", self.function_call is not None),
            ("verbosity", self.verbosity not in (None, "medium")),
            ("modalities", "audio" in (self.modalities or [])), ("audio", self.audio is not None),
            ("web_search_options", self.web_search_options is not None)]

    def ignored(self) -> list[str]:
        return super().ignored() + [name for name, used in [
            ("parallel_tool_calls", self.parallel_tool_calls is not None), ("reasoning_effort", self.reasoning_effort),
            ("prediction", self.prediction), ("verbosity", self.verbosity), ("modalities", self.modalities),
        ] if used]

    @property
    def tools_on(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"
