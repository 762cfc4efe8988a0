"""What a generation request hands the engine, and how its tokens come back to the event loop.

The engine thread never touches asyncio objects directly: it posts through
`loop.call_soon_threadsafe`, and a `Group` (the sequences of one HTTP request) reads them from
one asyncio queue, tagged with the sequence's index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memoir_core.generate import SamplingParams


def resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> Callable[[Any], None]:
    """A function the engine thread calls with a result (or an exception) to settle `future`."""

    def settle(result: Any) -> None:
        if future.done():  # the caller went away
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def post(result: Any) -> None:
        try:
            loop.call_soon_threadsafe(settle, result)
        except RuntimeError:  # loop closed
            pass

    return post


@dataclass(frozen=True)
class Prompt:
    """Plain text, or chat messages that the model's chat template turns into the prompt."""

    text: str | None = None
    messages: list[dict] | None = None
    ids: list[int] | None = None  # a prompt given as token ids
    tools: list[dict] | None = None  # for a chat template that reads them
    continue_final: bool = False  # continue the last (assistant) message instead of answering it
    template_kwargs: dict | None = None


@dataclass(frozen=True)
class MemoryInfo:
    """The routing decision a sequence was admitted with; fixed for all of its tokens."""

    on: bool
    edit_id: str | None  # the edit whose memory is in use (None when off)
    best_edit_id: str | None  # the closest stored edit, in use or not
    overlap: float
    version: int

    @classmethod
    def of(cls, decision) -> MemoryInfo:
        on = decision.route is not None
        return cls(on, decision.route.edit_id if on else None, decision.best_edit_id,
                   round(float(decision.best_overlap), 6), decision.version)

    def to_dict(self, edits: bool = True) -> dict[str, Any]:
        """With edits false (a client key), only whether the memory was on and its version."""
        if not edits:
            return {"on": self.on, "edit_id": None, "best_edit_id": None, "overlap": None, "version": self.version}
        return {"on": self.on, "edit_id": self.edit_id, "best_edit_id": self.best_edit_id,
                "overlap": self.overlap, "version": self.version}


@dataclass(frozen=True)
class Chunk:
    """New text of one sequence; the last chunk (finished) also carries the whole text."""

    index: int
    piece: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    memory: MemoryInfo
    text: str | None = None
    logprobs: list[dict] = field(default_factory=list)  # of the new tokens (logprob_view), when asked for
    prompt_logprobs: list[dict | None] | None = None  # of the prompt's tokens, in the first chunk (echo)


@dataclass
class Completion:
    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    memory: MemoryInfo
    logprobs: list[dict] = field(default_factory=list)
    prompt_logprobs: list[dict | None] | None = None


@dataclass
class Group:
    """The sequences of one request, as the event loop sees them."""

    loop: asyncio.AbstractEventLoop
    size: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # read by the engine thread: a plain flag is enough
    _open: int = -1
    _peeked: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._open = self.size

    # -- engine thread side -------------------------------------------------------------------
    def post(self, item: Chunk | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    # -- event loop side ----------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._open == 0

    async def next(self) -> Chunk | None:
        """The next chunk of any sequence; None once every sequence has finished."""
        if self._peeked:
            return self._peeked.pop()
        if self._open == 0:
            return None
        item = await self.queue.get()
        if isinstance(item, BaseException):
            self._open = 0
            raise item
        if item.finished:
            self._open -= 1
        return item

    async def first(self) -> Chunk | None:
        """Wait for the first chunk (prefill done, or an error raised) without consuming it."""
        item = await self.next()
        if item is not None:
            self._peeked.append(item)
        return item

    async def chunks(self):
        while (item := await self.next()) is not None:
            yield item

    async def collect(self) -> list[Completion]:
        done: dict[int, Completion] = {}
        logprobs: dict[int, list[dict]] = {}
        prompt_logprobs: dict[int, list] = {}
        async for c in self.chunks():
            logprobs.setdefault(c.index, []).extend(c.logprobs)
            if c.prompt_logprobs is not None:
                prompt_logprobs[c.index] = c.prompt_logprobs
            if c.finished:
                done[c.index] = Completion(c.index, c.text or "", c.finish_reason or "stop", c.prompt_tokens,
                                           c.completion_tokens, c.memory, logprobs.get(c.index, []),
                                           prompt_logprobs.get(c.index))
        return [done[i] for i in sorted(done)]


@dataclass
class Work:
    """One sequence waiting for, or in, the running batch (the engine thread's view)."""

    group: Group
    index: int
    prompt: Prompt
    params: SamplingParams
    done: bool = False
    scored: bool = False  # its prompt logprobs were handed out
