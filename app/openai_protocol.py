"""Request and response models of the OpenAI-compatible routes, with OpenAI's field names.

Fields OpenAI defines but memoir does not implement are accepted at their neutral values and
refused (400, naming the parameter) otherwise; unknown fields are refused too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from .protocol import MAX_SEED, MAX_TEXT_CHARS, AnyText, MemoryOut, PromptText, Stops, Usage


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = False


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

    def unsupported(self) -> list[tuple[str, bool]]:
        """(parameter, set to something memoir does not do)"""
        return [("presence_penalty", bool(self.presence_penalty)), ("frequency_penalty", bool(self.frequency_penalty)),
                ("logit_bias", bool(self.logit_bias))]


class CompletionRequest(OpenAIRequest):
    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=16)]
    max_tokens: StrictInt | None = Field(16, ge=1, le=1_000_000)
    echo: bool | None = False
    logprobs: StrictInt | None = Field(None, ge=0, le=5)
    best_of: StrictInt | None = Field(None, ge=1, le=16)
    suffix: str | None = Field(None, max_length=MAX_TEXT_CHARS)

    def unsupported(self) -> list[tuple[str, bool]]:
        return super().unsupported() + [("echo", bool(self.echo)), ("logprobs", self.logprobs is not None),
                                        ("best_of", (self.best_of or 1) > 1), ("suffix", bool(self.suffix))]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: AnyText


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: AnyText | Annotated[list[TextPart], Field(max_length=64)]
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(BaseModel):
    type: str = Field(max_length=64)


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_tokens: StrictInt | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, bool]]:
        return super().unsupported() + [
            ("logprobs", bool(self.logprobs)), ("top_logprobs", self.top_logprobs is not None),
            ("response_format", self.response_format is not None and self.response_format.type != "text"),
            ("tools", bool(self.tools)), ("tool_choice", self.tool_choice not in (None, "none"))]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None
    memory: MemoryOut | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    memory: MemoryOut | None = Field(None, description="memoir extension: the memory decision of choice 0")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None
    memory: MemoryOut | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    memory: MemoryOut | None = Field(None, description="memoir extension: the memory decision of choice 0")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "memoir"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
