"""Which MemoryStore keeps the memory: chosen from the settings, one factory per kind.

"dir" is the durable state directory (memoir_core.store.DirectoryStore): an edit is
acknowledged only once it is on disk, and a restart restores the memory exactly. "memory"
keeps nothing across restarts (MEMOIR_STORE=memory: tests and throwaway servers).

With MEMOIR_STORE=auto (the default) the memory is durable: in MEMOIR_STATE_DIR when it is set,
otherwise in a directory of its own per base model under the user's data directory
($XDG_DATA_HOME/memoir/state/<model>, by default ~/.local/share/memoir/state/<model>), so edits
survive a restart out of the box and two models never meet in one state directory.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path

from app.settings import Settings
from memoir_core import models
from memoir_core.errors import StateError
from memoir_core.state import InMemoryStore, MemoryStore

log = logging.getLogger(__name__)

StoreFactory = Callable[[Settings], MemoryStore]


def default_state_dir(settings: Settings) -> Path:
    """Where the memory of settings.model lives when no MEMOIR_STATE_DIR is given."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    name = models.model_name(settings.model).rstrip("/\\")
    if os.path.isdir(os.path.expanduser(name)):  # a local folder: its own name, made unique by its path
        path = os.path.abspath(os.path.expanduser(name))
        name = f"{os.path.basename(path)}-{zlib.crc32(path.encode()):08x}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.") or "model"
    return Path(base) / "memoir" / "state" / slug


def state_dir(settings: Settings) -> Path:
    return Path(settings.state_dir).expanduser() if settings.state_dir is not None else default_state_dir(settings)


def directory_store(settings: Settings) -> MemoryStore:
    from memoir_core.store import DirectoryStore

    path = state_dir(settings)
    how = "MEMOIR_STATE_DIR" if settings.state_dir is not None else \
        "the default; MEMOIR_STATE_DIR or --state-dir to choose another, MEMOIR_STORE=memory for RAM only"
    log.info("the memory is kept in %s (%s)", path.resolve(), how)
    # DirectoryStore creates the directory, then takes its lock (StateLockedError: in use)
    return DirectoryStore(str(path), snapshot_min_bytes=settings.snapshot_min_bytes,
                          snapshot_ratio=settings.snapshot_ratio, accept_loss=settings.accept_state_loss)


def memory_store(settings: Settings) -> MemoryStore:
    log.warning("the memory is kept in RAM only (MEMOIR_STORE=memory): edits are lost when the server stops")
    return InMemoryStore()


def postgres_store(settings: Settings) -> MemoryStore:
    try:
        from memoir_core.store.postgres import PostgresStore
    except ImportError as e:
        raise StateError(f"MEMOIR_STATE_URL needs psycopg 3 (pip install 'memoir[postgres]'): {e}") from None
    if settings.state_url is None:
        raise StateError("MEMOIR_STORE=postgres needs MEMOIR_STATE_URL=postgresql://...")
    store = PostgresStore(settings.state_url.get_secret_value(), replica=settings.replica_name,
                          snapshot_every=settings.pg_snapshot_every, large_delta=settings.pg_large_delta_bytes)
    log.info("the memory is kept in %s, shared by every replica on that database", store.where)
    return store


STORES: dict[str, StoreFactory] = {
    "memory": memory_store,
    "dir": directory_store,
    "postgres": postgres_store,
}


def register(kind: str, factory: StoreFactory) -> None:
    STORES[kind] = factory


def open_store(settings: Settings) -> MemoryStore:
    kind = settings.store
    if kind == "auto":
        kind = "postgres" if settings.state_url is not None else "dir"
    if settings.state_url is not None and kind != "postgres":
        raise StateError(f"MEMOIR_STATE_URL (PostgreSQL) contradicts MEMOIR_STORE={settings.store}; unset one of them")
    if settings.state_url is not None and settings.state_dir is not None:  # the image sets a state directory
        log.warning("MEMOIR_STATE_URL is set: the memory is in PostgreSQL; MEMOIR_STATE_DIR=%s is not used",
                    settings.state_dir)
    if kind == "memory" and settings.state_dir is not None:
        raise StateError(f"MEMOIR_STORE=memory (RAM only) contradicts MEMOIR_STATE_DIR={settings.state_dir}; "
                         "unset one of them")
    factory = STORES.get(kind)
    if factory is None:
        raise StateError(f"no memory store of kind {kind!r} in this build (known: {', '.join(sorted(STORES))})")
    return factory(settings)
