"""The worker's table of routed edits' columns, per (edit id, memory version).

A request keeps the version it was admitted at for all of its tokens; an edit committed while
it runs changes W_m for later requests only. So the table holds columns per version, pushed by
memoir before the first request that needs them and dropped when no running request can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import MissingRouteError


@dataclass(frozen=True)
class StoredRoute:
    idx: torch.Tensor  # [k] long: the edit's columns of the down projection's input
    cols: torch.Tensor  # [k, d_out] fp32: W_m[:, idx].T at that version
    offset: torch.Tensor | None  # [k] fp32: subtracted from a[idx] first (de-centred memory)
    answer: str | None  # the edit's target, for release after the answer
    key: torch.Tensor | None = None  # [n, k] fp32: answer keys less offset (memory_layer.Route.key)

    @property
    def nbytes(self) -> int:
        extra = sum(t.nbytes for t in (self.offset, self.key) if t is not None)
        return self.idx.nbytes + self.cols.nbytes + extra


def pack(tensor: torch.Tensor) -> dict:
    """A tensor as vLLM's RPC carries it intact: its msgpack encoder sends a tensor argument as a
    reference the untyped receiving side cannot rebuild, while bytes and lists go through as is."""
    t = tensor.detach().cpu().contiguous()
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.numpy().tobytes()}


def unpack(packed: dict) -> torch.Tensor:
    dtype = getattr(torch, packed["dtype"])
    return torch.frombuffer(bytearray(packed["data"]), dtype=dtype).reshape(packed["shape"])


class RouteTable:
    def __init__(self, device: torch.device):
        self.device = device
        self._routes: dict[tuple[str, int], StoredRoute] = {}

    def put(self, edit_id: str, version: int, idx: torch.Tensor, cols: torch.Tensor,
            offset: torch.Tensor | None, answer: str | None, key: torch.Tensor | None = None) -> None:
        if idx.ndim != 1 or cols.ndim != 2 or cols.shape[0] != idx.shape[0]:
            raise ValueError(f"route {edit_id}@{version}: idx {tuple(idx.shape)} and cols {tuple(cols.shape)} "
                             "do not match ([k] and [k, d_out])")
        to = self.device
        self._routes[(edit_id, int(version))] = StoredRoute(
            idx.to(to, torch.long), cols.to(to, torch.float32).contiguous(),
            None if offset is None else offset.to(to, torch.float32), answer,
            None if key is None else key.to(to, torch.float32))

    def get(self, key: tuple[str, int]) -> StoredRoute:
        try:
            return self._routes[key]
        except KeyError:
            raise MissingRouteError(f"edit {key[0]!r} at version {key[1]} was never pushed to this worker") from None

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._routes

    def drop(self, keys) -> int:
        """keys: (edit, version) pairs, as lists after the RPC."""
        return sum(self._routes.pop((e, int(v)), None) is not None for e, v in keys)

    def held(self) -> list[tuple[str, int]]:
        return list(self._routes)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._routes.values())
