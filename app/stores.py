"""Which MemoryStore keeps the memory: chosen from the settings, one factory per kind.

"memory" keeps nothing across restarts (no state directory configured); "dir" is the durable
state directory (MEMOIR_STATE_DIR), registered here by the module that implements it.
"""

from __future__ import annotations

from collections.abc import Callable

from memoir_core.errors import StateError
from memoir_core.state import InMemoryStore, MemoryStore

from .settings import Settings

StoreFactory = Callable[[Settings], MemoryStore]

STORES: dict[str, StoreFactory] = {
    "memory": lambda settings: InMemoryStore(),
}


def register(kind: str, factory: StoreFactory) -> None:
    STORES[kind] = factory


def open_store(settings: Settings) -> MemoryStore:
    kind = settings.store
    if kind == "auto":
        kind = "dir" if settings.state_dir is not None else "memory"
    if kind == "dir" and settings.state_dir is None:
        raise StateError("MEMOIR_STORE=dir needs MEMOIR_STATE_DIR (the state directory)")
    factory = STORES.get(kind)
    if factory is None:
        raise StateError(f"no memory store of kind {kind!r} in this build (known: {', '.join(sorted(STORES))}); "
                         "without MEMOIR_STATE_DIR the memory is kept in RAM only")
    return factory(settings)
