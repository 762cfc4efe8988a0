"""memoir's decoder surface over vLLM's engine, so the server's engine thread drives either.

app.service.engine.Engine owns a decoder with four moves: `room`, `add` (admit sequences),
`step` (one turn: events of new text) and `cancel`, and reads `running`. The builtin one is
memoir_core.generate.Decoder. This one routes each admitted sequence with memoir (on the
engine thread, which owns the Memoir: edits train and commit there too, so a sequence admitted
after an edit's commit routes at the new version and one admitted before keeps its own),
pushes the columns it needs, and hands the request to vLLM's LLMEngine, whose step() runs one
scheduler turn in the engine-core process.
"""

from __future__ import annotations

import itertools

from memoir_core.generate import Event, GenSequence
from memoir_core.prompts import Encoded

from . import logprobs
from .client import VllmMemory
from .sampling import to_vllm


class VllmDecoder:
    # vLLM's structured outputs enforce a request's OutputConstraint: the engine thread builds no
    # memoir Matcher for it (app.service.decoders.constrains_output)
    constrains_output = True

    def __init__(self, memoir, llm, max_batch: int):
        self.memoir = memoir
        self.llm = llm  # vllm.LLM (memoir_vllm.offline.engine), kept for its engine's life
        self.engine = llm.llm_engine  # its (v1) LLMEngine: add_request, step, abort_request
        self.max_batch = max_batch
        self.memory = VllmMemory(memoir, llm.collective_rpc)
        self.memory.install()
        self.running: list[GenSequence] = []
        self._ids: dict[str, GenSequence] = {}
        self._keys: dict[str, tuple[str, int]] = {}  # request -> the columns it names
        self._counter = itertools.count()

    @staticmethod
    def check(params) -> None:
        """Raise InvalidRequestError for a request vLLM would refuse (an invalid value, a schema
        that does not compile), per request, so it fails alone before it is admitted."""
        to_vllm(params, None, set())

    @property
    def room(self) -> int:
        return self.max_batch - len(self.running)

    def add(self, sequences: list[GenSequence]) -> list[Event]:
        """Route and submit; their first tokens come with the next step()."""
        if len(sequences) > self.room:
            raise RuntimeError("no room in the running batch")
        prepared = self.memory.prepare([Encoded(s.prompt_ids, s.span, s.tail) for s in sequences],
                                       act=self.memoir.layer.enabled)
        eos = self.memoir.encoder.eos_ids
        for seq, p in zip(sequences, prepared, strict=True):
            seq.decision = p.decision
            req_id = f"memoir-{next(self._counter)}"
            self.engine.add_request(req_id, p.prompt, to_vllm(seq.params, p.tag, eos))
            self._ids[req_id] = seq
            if p.tag is not None:
                self._keys[req_id] = p.tag.key
            self.running.append(seq)
        return []

    def step(self) -> list[Event]:
        events = []
        for out in self.engine.step():
            seq = self._ids.get(out.request_id)
            if seq is None:
                continue
            completion = out.outputs[0]
            params = seq.params
            if params.prompt_logprobs is not None and seq.prompt_logprobs is None:
                seq.prompt_logprobs = logprobs.prompt(seq.prompt_ids, out.prompt_logprobs or [],
                                                      params.prompt_logprobs)
            if params.max_new_tokens == 0:  # only scored: the one token vLLM had to sample is dropped
                events.append(self._scored(out.request_id, seq, out.finished))
                continue
            seq.out_ids = list(completion.token_ids)
            seq.text = completion.text  # cumulative, cut at stop strings by vLLM
            piece = seq.text[seq.emitted:]
            seq.emitted = len(seq.text)
            if out.finished:
                seq.finish_reason = completion.finish_reason or "stop"
                if seq.finish_reason == "stop" and seq.out_ids and not isinstance(completion.stop_reason, str):
                    seq.out_ids.pop()  # the end token, which memoir's decoder does not count either
                self._drop(out.request_id)
            events.append(Event(seq, piece, out.finished, self._new_logprobs(seq, completion)))
        return events

    @staticmethod
    def _new_logprobs(seq: GenSequence, completion) -> list:
        """The logprobs of the tokens since the last event; none for an end token dropped from
        out_ids, as the builtin decoder keeps one per token of out_ids."""
        if seq.params.logprobs is None or not completion.logprobs:
            return []
        done = len(seq.logprobs)
        new = logprobs.sample(seq.out_ids[done:], completion.logprobs[done:len(seq.out_ids)], seq.params.logprobs)
        seq.logprobs.extend(new)
        return new

    def _scored(self, req_id: str, seq: GenSequence, finished: bool) -> Event:
        if not finished:
            self.engine.abort_request([req_id])
        seq.finish_reason = "length"
        self._drop(req_id)
        return Event(seq, "", True)

    def cancel(self, tag) -> None:
        for req_id, seq in list(self._ids.items()):
            if seq.tag is tag:
                self.engine.abort_request([req_id])
                seq.finish_reason = "cancelled"
                self._drop(req_id)

    def reset(self) -> None:
        """After a failed step: abort whatever vLLM still runs for us."""
        for req_id in list(self._ids):
            self.engine.abort_request([req_id])
            self._drop(req_id)

    def close(self) -> None:
        from . import offline

        offline.close(self.llm)

    def _drop(self, req_id: str) -> None:
        seq = self._ids.pop(req_id)
        self.running = [s for s in self.running if s is not seq]
        if self._keys.pop(req_id, None) is not None:
            self.memory.trim(set(self._keys.values()))
