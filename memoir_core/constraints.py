"""Grammar-constrained decoding with llguidance: one matcher per constrained sequence.

llguidance compiles a JSON schema against the tokenizer once per request (milliseconds) and
then, per decode step, gives the set of tokens that keep the output valid; the sampled token is
fed back. The tokenizer's conversion is slow (about a second) and is done once per encoder.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch

from .errors import InvalidRequestError
from .sampling import OutputConstraint

# one space after , and : as json.dumps writes it (what models have seen most), no other whitespace
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_lock = threading.Lock()
_tokenizers: dict[int, llguidance.LLTokenizer] = {}


def compact(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with memoir's JSON layout inside it (llguidance's `x-guidance` options), so any
    llguidance, vLLM's included, writes the same bytes; options the schema sets itself win."""
    return {**schema, "x-guidance": {**_COMPACT, **schema.get("x-guidance", {})}}


def compile_schema(schema: dict[str, Any]) -> str:
    """The llguidance grammar of a JSON schema; InvalidRequestError naming the problem if it has one."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(compact(schema)))
    except (ValueError, TypeError) as error:
        raise InvalidRequestError(f"the JSON schema cannot be used: {error}") from None
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise InvalidRequestError(f"the JSON schema cannot be used: {problem}")
    return grammar


def _llg_tokenizer(tokenizer, eos: int) -> llguidance.LLTokenizer:
    with _lock:
        key = id(tokenizer)
        if key not in _tokenizers:
            _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=eos)
        return _tokenizers[key]


class Matcher:
    """The allowed next tokens of one sequence under its constraint."""

    def __init__(self, constraint: OutputConstraint, tokenizer, eos: int, vocab: int):
        self._m = llguidance.LLMatcher(_llg_tokenizer(tokenizer, eos), compile_schema(constraint.schema))
        if self._m.is_error():
            raise InvalidRequestError(f"the JSON schema cannot be used: {self._m.get_error()}")
        self.vocab = vocab

    def allowed(self, device: torch.device) -> torch.Tensor:
        """A bool mask over the model's vocabulary (its logits may be wider than the tokenizer)."""
        bits = np.unpackbits(np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8), bitorder="little")
        mask = torch.zeros(self.vocab, dtype=torch.bool)
        n = min(len(bits), self.vocab)
        mask[:n] = torch.from_numpy(bits[:n].astype(bool))
        return mask.to(device)

    def consume(self, token: int) -> None:
        self._m.consume_token(token)

    @property
    def done(self) -> bool:
        """The output is complete: only end-of-sequence may follow."""
        return self._m.is_stopped()
