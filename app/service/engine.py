"""The one owner of the model: a thread that decodes, trains edits step by step, and commits.

Memoir is not thread-safe, so every model call (tokenising, prefill, decoding, training,
registry reads) runs on this thread; the event loop only posts commands and awaits answers.
Each turn the thread
  1. takes posted commands (new sequences, cancellations, registry reads, edit jobs),
  2. admits waiting sequences into the running batch when it has room (continuous batching),
  3. decodes one token for every running sequence,
  4. advances the current edit job for about as long as that decode step took, in steps or
     time slices (memoir_core/timeslice.py), and sooner back to 1. when a command arrives
     (the writer commits an edit when it is trained).
A running sequence keeps the memory version it was admitted with (its route copies W_m's
columns at prefill), so a commit between two decode steps never changes it, and a request that
arrives after an edit's response is admitted after the commit and sees the edit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from app.settings import Settings
from memoir_core.constraints import Matcher
from memoir_core.errors import EditNotFoundError, InvalidRequestError
from memoir_core.generate import GenSequence, SamplingParams
from memoir_core.memoir import Memoir
from memoir_core.preview import Preview
from memoir_core.records import EditRecord
from memoir_core.state import MemoryStore

from . import decoders, limits, telemetry
from .engine_errors import EngineStoppedError, QueueFullError
from .logprobs import logprob_views, token_prompt
from .streams import Chunk, Group, MemoryInfo, Prompt, Work, resolver
from .writer import Applied, EditJob, EditSpec, Removal, RemoveJob, Writer

log = logging.getLogger(__name__)
_STOP = object()


class Engine:
    def __init__(self, memoir: Memoir, store: MemoryStore, settings: Settings):
        self.memoir = memoir
        self.settings = settings
        limits.apply(memoir, settings)
        self.writer = Writer(memoir, store, settings.max_blast_radius,
                             settings.preview_max_new_tokens, settings.edit_slice_ms / 1000)
        self.decoder = decoders.make(memoir, settings)
        self.context = getattr(memoir.model.config, "max_position_embeddings", None)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: deque[Work] = deque()
        self._jobs: deque[EditJob | RemoveJob] = deque()
        self._job: EditJob | RemoveJob | None = None
        self._lock = threading.Lock()  # guards the two counters below (read on the loop, written on both)
        self._sequences = 0  # queued or running
        self._edit_requests = 0  # queued or training
        self._edit_items = 0  # the edits (and removals) in those requests
        self._stop_by = 0.0  # stop(): until when an edit that is training may go on
        self._thread = threading.Thread(target=self._run, name="memoir-engine", daemon=True)

    # -- the event loop's side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Blocking: call it off the event loop. An edit that is training finishes first (within
        the timeout), so an orderly shutdown does not throw its work away; queued ones are refused."""
        if self._thread.is_alive():
            self._stop_by = time.monotonic() + timeout
            self._inbox.put(_STOP)
            self._thread.join(timeout + 1.0)
        decoders.close(self.decoder)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def generate(self, prompts: list[Prompt], params: list[SamplingParams]) -> Group:
        self._check_alive()
        if len(prompts) > self.settings.max_waiting:
            raise InvalidRequestError(f"{len(prompts)} sequences in one request; the limit is "
                                      f"{self.settings.max_waiting}")
        group = Group(asyncio.get_running_loop(), len(prompts))
        telemetry.generation_started(group)
        with self._lock:
            if self._sequences + len(prompts) > self.settings.max_waiting:
                raise QueueFullError(f"{self._sequences} sequences are queued or running; try again shortly", 1)
            self._sequences += len(prompts)
        self._post(("generate", [Work(group, i, p, s) for i, (p, s) in enumerate(zip(prompts, params))]))
        return group

    def cancel(self, group: Group) -> None:
        if not (group.cancelled or group.finished):
            group.cancelled = True
            self._post(("cancel", group))

    async def edit(self, items: list[EditSpec]) -> tuple[list[Applied], int]:
        """Apply edits in order; returns them and the memory version when the last one was done."""
        return await self._submit_job(lambda post: EditJob(items, telemetry.watch_edits(post)), len(items))

    async def preview(self, item: EditSpec) -> Preview:
        """Train one edit on the writer thread and preview it (memoir_core.preview); nothing is applied."""
        return await self._submit_job(lambda post: EditJob([item], post, dry_run=True), 1)

    async def remove(self, edit_id: str) -> Removal:
        return await self._submit_job(lambda post: RemoveJob(edit_id, telemetry.watch_removal(post, edit_id)), 1)

    async def call(self, fn: Callable[[Memoir], Any]) -> Any:
        """Run a short read of the memory (the registry) on the engine thread."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._post(("call", fn, resolver(loop, future)))
        return await future

    # -- named reads of the memory ------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The memory version, read off the engine thread: a momentary value (one int, read whole)."""
        return self.memoir.version

    async def edits(self, offset: int = 0, limit: int | None = None) -> tuple[list[EditRecord], int, int]:
        """A page of the registry in apply order, the number of live edits, and the version."""
        def read(memoir: Memoir):
            records = list(memoir.edits.values())
            return records[offset: None if limit is None else offset + limit], len(records), memoir.version

        return await self.call(read)

    async def record(self, edit_id: str) -> EditRecord | None:
        """One edit's record (None: no such edit)."""
        return await self.call(lambda memoir: memoir.edits.get(edit_id))

    async def detail(self, edit_id: str) -> tuple[EditRecord, dict[str, int]]:
        """One edit and the edits that share columns with it, and how many (EditNotFoundError)."""
        def read(memoir: Memoir):
            record = memoir.edits.get(edit_id)
            if record is None:
                raise EditNotFoundError(f"no edit with id {edit_id!r}")
            return record, memoir.shared_columns(edit_id)

        return await self.call(read)

    async def digest(self) -> dict:
        """Memory.digest(): equal on two replicas that hold bit-identical memories."""
        return await self.call(lambda memoir: memoir.memory.digest())

    def submit(self, fn: Callable[[Memoir], Any]) -> concurrent.futures.Future:
        """Run fn(memoir) on the engine thread, from any thread (the replica's follower)."""
        self._check_alive()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def post(value) -> None:
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

        self._post(("call", fn, post))
        return future

    async def _submit_job(self, make, weight: int):
        self._check_alive()
        self.writer.refuse_if_failed()
        with self._lock:
            if self._edit_requests >= self.settings.edit_queue_size:
                wait = math.ceil(max(1.0, self._edit_items * self.writer.seconds_per_edit))
                raise QueueFullError(f"the edit queue is full ({self._edit_requests} requests waiting)", wait)
            self._edit_requests += 1
            self._edit_items += weight
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._post(("job", make(resolver(loop, future))))
        return await future

    def _check_alive(self) -> None:
        if not self._thread.is_alive():
            raise EngineStoppedError("the engine is not running")

    def _post(self, command) -> None:
        self._inbox.put(command)

    # -- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._take_commands(*self._idle()):
                self._admit()
                started = time.perf_counter()
                self._step()
                self._advance_job(time.perf_counter() - started)
            # stopping: finish the edit that trains (not one still waiting for the cluster's lock)
            while self._job is not None and time.monotonic() < self._stop_by and not self.writer.waiting:
                self._advance_job()
        except Exception:  # a bug: answer everyone rather than leave them hanging
            log.exception("the engine thread failed")
        self._shutdown()

    def _idle(self) -> tuple[bool, float | None]:
        """Whether the thread may block for the next command, and for how long at most."""
        if self._waiting or self.decoder.running:
            return False, None
        if self._job is not None and self.writer.waiting:  # only waiting for another replica's edit
            return True, 0.02
        return not (self._job or self._jobs), None

    def _take_commands(self, wait: bool, timeout: float | None = None) -> bool:
        try:
            command = self._inbox.get(timeout=timeout) if wait else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while command is not _STOP:
            self._handle(command)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return True
        return False

    def _handle(self, command) -> None:
        kind = command[0]
        if kind == "generate":
            self._waiting.extend(command[1])
        elif kind == "cancel":
            group = command[1]
            for seq in [s for s in self.decoder.running if s.tag.group is group]:
                self.decoder.cancel(seq.tag)
                telemetry.aborted(seq.tag)
                self._done(seq.tag)
            for work in [w for w in self._waiting if w.group is group]:
                self._waiting.remove(work)
                telemetry.aborted(work)
                self._done(work)
        elif kind == "call":
            _, fn, post = command
            try:
                post(fn(self.memoir))
            except Exception as error:  # noqa: BLE001
                post(error)
        elif kind == "job":
            self._jobs.append(command[1])

    def _admit(self) -> None:
        batch: list[GenSequence] = []
        room = self.decoder.room
        last = None
        while self._waiting and len(batch) < room:
            work = self._waiting[0]
            # A request's sequences are admitted together, so they share one memory version;
            # only one larger than the whole batch is split. (They are contiguous in the queue.)
            if work.group is not last and (batch or self.decoder.running) and \
                    len(batch) + work.group.size - work.index > room:
                break
            last = self._waiting.popleft().group
            try:
                batch.append(self._sequence(work))
            except Exception as error:  # noqa: BLE001 - a bad prompt fails its own request only
                self._fail(work, error)
        if batch:
            try:
                self._dispatch(self.decoder.add(batch))
            except Exception as error:
                log.exception("prefill failed")
                for seq in batch:
                    self._fail(seq.tag, error)

    def _sequence(self, work: Work) -> GenSequence:
        encoder = self.memoir.encoder
        prompt = work.prompt
        if prompt.messages is not None:
            try:
                enc = encoder.chat(prompt.messages, prompt.tools, prompt.continue_final, prompt.template_kwargs)
            except Exception as error:  # noqa: BLE001 - jinja templates raise their own errors
                raise InvalidRequestError(f"the model's chat template refused the messages: {error}") from None
        elif prompt.ids is not None:
            enc = token_prompt(prompt.ids, len(encoder.tokenizer))
        else:
            enc = encoder.plain(prompt.text or "")
        n, limit = len(enc.ids), self.settings.max_prompt_tokens
        if n == 0:
            raise InvalidRequestError("the prompt is empty after tokenisation")
        if n > limit:
            raise InvalidRequestError(f"the prompt is {n} tokens; the limit is {limit}")
        if self.context and n + work.params.max_new_tokens > self.context:
            raise InvalidRequestError(f"the prompt ({n} tokens) plus max_new_tokens ({work.params.max_new_tokens}) "
                                      f"exceeds the model's context of {self.context} tokens")
        work.params.validate()
        decoders.check(self.decoder, work.params)
        seq = GenSequence(enc.ids, enc.span, work.params, tag=work, tail=enc.tail)
        if work.params.constraint is not None and not decoders.constrains_output(self.decoder):
            seq.matcher = Matcher(work.params.constraint, encoder.tokenizer, self.memoir.encoder.tokenizer.eos_token_id,
                                  self.memoir.model.config.vocab_size)
        return seq

    def _step(self) -> None:
        if not self.decoder.running:
            return
        try:
            events = self.decoder.step()
        except Exception as error:
            log.exception("decoding failed; the running batch is dropped")
            for seq in self.decoder.running:
                self._fail(seq.tag, error)
            self.decoder = decoders.fresh(self.decoder, self.memoir, self.settings)
            return
        self._dispatch(events)

    def _dispatch(self, events) -> None:
        for ev in events:
            seq, work = ev.sequence, ev.sequence.tag
            if work.done:
                continue
            first = not work.scored and seq.prompt_logprobs is not None
            work.scored = work.scored or first
            tokenizer = self.memoir.encoder.tokenizer
            chunk = Chunk(work.index, ev.piece, ev.finished, seq.finish_reason, len(seq.prompt_ids),
                          len(seq.out_ids), MemoryInfo.of(seq.decision), seq.text if ev.finished else None,
                          logprob_views(tokenizer, ev.logprobs),
                          logprob_views(tokenizer, seq.prompt_logprobs) if first else None)
            telemetry.on_chunk(work, chunk)
            work.group.post(chunk)
            if ev.finished:
                self._done(work)

    def _advance_job(self, share: float = 0.0) -> None:
        """Advance the current job by at least one step (or time slice), and on for about `share`
        seconds (the time the decode step took: edits and generation split the thread evenly)
        unless a command arrives: a new request then waits at most one slice for its prefill."""
        until = time.perf_counter() + share
        while True:
            if self._job is None:
                if not self._jobs:
                    return
                self._job = self._jobs.popleft()
            job = self._job
            if self.writer.remove(job) if isinstance(job, RemoveJob) else self.writer.step(job):
                self._job_done(self._job)
                self._job = None
            if time.perf_counter() >= until or not self._inbox.empty() or self.writer.waiting:
                return

    def _done(self, work: Work) -> None:
        if not work.done:
            work.done = True
            with self._lock:
                self._sequences -= 1

    def _fail(self, work: Work, error: BaseException) -> None:
        if not work.done:
            work.group.post(error)
            self._done(work)

    def _job_done(self, job: EditJob | RemoveJob) -> None:
        with self._lock:
            self._edit_requests -= 1
            self._edit_items -= len(job.items) if isinstance(job, EditJob) else 1

    def _shutdown(self) -> None:
        stopped = EngineStoppedError("the server is shutting down")
        for seq in list(self.decoder.running):
            self._fail(seq.tag, stopped)
        while self._waiting:
            self._fail(self._waiting.popleft(), stopped)
        # Commands posted after the stop still get an answer.
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            if command is not _STOP and command[0] != "cancel":
                self._handle(command)
        while self._waiting:
            self._fail(self._waiting.popleft(), stopped)
        for job in ([self._job] if self._job else []) + list(self._jobs):
            if getattr(job, "training", None) is not None:
                job.training.close()  # the edit's generator (and a sliced one's greenlet) unwinds
            job.post(stopped)
            self._job_done(job)
        self._job = None
        self._jobs.clear()
