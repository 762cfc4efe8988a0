"""What travels with a vLLM request: its routing decision, as an edit id, a version and a start.

memoir decides before it submits (routing on the whole prompt, on its own copy of the model),
so a decision never depends on how vLLM splits the prefill into chunks or on which blocks a
prefix-cache hit skips. The columns themselves go to the workers apart (worker.py); a request
only names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXTRA_KEY = "memoir"  # the key in vLLM's SamplingParams.extra_args


@dataclass(frozen=True)
class RouteTag:
    edit_id: str
    version: int  # the memory version the columns were frozen at (memory_layer.Route.version)
    start: int  # first prompt position the memory acts on: the routed span's start (BatchRouting.active)
    # which of the edit's answer keys the prompt's last token reads (memory_layer.Route.key: 0 the
    # plain form's, 1 the templated form's); -1: none, that token reads its own input
    answer_key: int = -1

    @property
    def key(self) -> tuple[str, int]:
        return self.edit_id, self.version

    def extra_args(self) -> dict[str, Any]:
        return {EXTRA_KEY: {"edit": self.edit_id, "version": self.version, "start": self.start, "key": self.answer_key}}

    @property
    def cache_salt(self) -> str:
        """KV computed under this decision is reused only by requests with the same decision: the
        memory changes the edited block's output, so every later block's keys and values."""
        return f"memoir:{self.edit_id}:{self.version}:{self.start}:{self.answer_key}"

    @classmethod
    def from_extra_args(cls, extra: Mapping[str, Any] | None) -> RouteTag | None:
        """None where the request carries no route (memory off: plain vLLM)."""
        tag = (extra or {}).get(EXTRA_KEY)
        if not tag:
            return None
        return cls(str(tag["edit"]), int(tag["version"]), int(tag["start"]), int(tag.get("key", -1)))
