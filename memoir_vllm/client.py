"""memoir's side of the plugin: route a prompt, push its edit's columns, tag the request.

Routing runs on memoir's own (Hugging Face) copy of the model, on the whole prompt, before the
request goes to vLLM: the same `Memoir.route_prompts` the builtin engine's decisions match, so
both engines agree on every decision by construction, and neither chunked prefill nor a
prefix-cache hit can change one. The cost is a forward pass up to the edited block on memoir's
side per prompt (docs/engines.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memoir_core import arch
from memoir_core.memory_layer import Decision
from memoir_core.prompts import Encoded

from .routes import pack
from .tags import RouteTag

# vLLM's collective RPC, as LLM.collective_rpc takes it: (method name, args) -> one result per worker
Rpc = Callable[..., list]
# Columns kept on the workers for edits routed recently, running requests' or not: an edit asked
# again at the same version is not sent again. 1 MB per route on the default model, 64 MB on an 8B one.
WORKER_ROUTE_BYTES = 256 << 20


def module_path(memoir) -> str:
    """Where the edited down projection sits, by the Hugging Face names vLLM's models keep
    ("model.layers.25.mlp.down_proj" on Llama-like models)."""
    spec = arch.spec_for(memoir.model)
    return f"{spec.blocks}.{memoir.config.layer}.{spec.down}"


@dataclass(frozen=True)
class Prepared:
    """One request ready for vLLM: its decision, its tag (None: memory off) and its prompt."""

    decision: Decision
    tag: RouteTag | None
    prompt: dict[str, Any]  # a vLLM TokensPrompt

    @property
    def extra_args(self) -> dict[str, Any] | None:
        return None if self.tag is None else self.tag.extra_args()


def answer_key(route, encoded: Encoded) -> int:
    """Which of the route's answer keys the prompt's last token reads (Route.key_row, as
    ResidualMemory picks it): -1 for its own input."""
    return route.key_row(encoded.span[1] < len(encoded.ids))


class VllmMemory:
    def __init__(self, memoir, rpc: Rpc):
        self.memoir = memoir
        self.rpc = rpc
        self._pushed: dict[tuple[str, int], int] = {}  # (edit, version) -> bytes, oldest first

    def install(self) -> list[dict]:
        return self.rpc("memoir_install", args=(module_path(self.memoir), self.memoir.config.release_after_answer))

    def prepare(self, prompts: Sequence[str | Encoded], memory: bool = True, act: bool = True) -> list[Prepared]:
        """Decide each prompt, push the columns of every edit routed to, and build the requests.
        memory=False: no routing, every decision off. act=False: routed, but sent untagged (the
        memory layer disabled: decisions say where it would have acted, as ResidualMemory.disable)."""
        encoded = [self.memoir.encode(p) for p in prompts]
        if memory:
            decisions = self.memoir.route_prompts(encoded)
        else:
            decisions = [Decision(None, None, 0.0, self.memoir.version) for _ in encoded]
        out = []
        for e, decision in zip(encoded, decisions):
            tag = None
            if decision.route is not None and act:
                route = decision.route
                tag = RouteTag(route.edit_id, route.version, e.span[0], answer_key(route, e))
                self._push(route)
            prompt: dict[str, Any] = {"prompt_token_ids": list(e.ids)}
            if tag is not None:
                prompt["cache_salt"] = tag.cache_salt
            out.append(Prepared(decision, tag, prompt))
        return out

    def forget(self, keys: Sequence[tuple[str, int]]) -> None:
        """Drop columns from the workers (no request in flight may name them)."""
        keys = [k for k in keys if k in self._pushed]
        if keys:
            self.rpc("memoir_drop_routes", args=([list(k) for k in keys],))
            for k in keys:
                del self._pushed[k]

    def trim(self, in_use: set[tuple[str, int]], budget: int = WORKER_ROUTE_BYTES) -> None:
        """Forget the oldest columns no running request names until the rest fit the budget."""
        total = sum(self._pushed.values())
        drop = []
        for key, size in self._pushed.items():
            if total <= budget:
                break
            if key not in in_use:
                drop.append(key)
                total -= size
        self.forget(drop)

    @property
    def pushed(self) -> set[tuple[str, int]]:
        return set(self._pushed)

    def _push(self, route) -> None:
        key = (route.edit_id, route.version)
        if key in self._pushed:
            self._pushed[key] = self._pushed.pop(key)  # the most recently used last
            return
        offset = None if route.offset is None else pack(route.offset)
        keys = None if route.key is None else pack(route.key)
        self.rpc("memoir_put_route", args=(route.edit_id, route.version, pack(route.idx), pack(route.cols), offset,
                                           route.answer, keys))
        self._pushed[key] = route.cols.nbytes
