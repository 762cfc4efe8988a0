"""Start-up and shut-down: open the store, load the model, rebuild or create the memory, start
the engine — in a background thread, so /health answers at once and /ready says when it is done.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import torch

from app.settings import Settings
from memoir_core import model_source, models
from memoir_core.config import MemoirConfig, checked
from memoir_core.errors import DurabilityError, ModelLoadError, StateCorruptError, StateError, StateMismatchError
from memoir_core.memoir import Memoir
from memoir_core.state import Loaded, Manifest, MemoryStore, check_manifest, restore, shared_log, stored_meaning

from .engine import Engine
from .engine_errors import NotReadyError
from .hostmem import trim
from .stores import open_store

log = logging.getLogger(__name__)

# Builds a Memoir with an empty memory: on the stored basis and config when a memory was
# loaded, fresh otherwise. Tests pass one that builds a tiny model.
Builder = Callable[[Loaded | None], Memoir]


def default_builder(settings: Settings) -> Builder:
    # bf16 copies serve the builtin decoder's steps; with vLLM decoding, memoir's copy only
    # routes and trains, so they would be RAM for nothing.
    bf16_steps = settings.bf16_steps and settings.engine == "builtin"

    def build(loaded: Loaded | None) -> Memoir:
        model_source.check(models.resolve(settings.model))  # in a second, with a cause, not a traceback
        model, tokenizer = models.load(settings.model, settings.device, settings.dtype)
        if loaded is not None:
            return Memoir(model, tokenizer, stored_config(loaded.manifest, settings.config), basis=loaded.basis,
                          pack_weights=settings.packed_weights, bf16_steps=bf16_steps)
        return Memoir(model, tokenizer, config_from(settings.config), pack_weights=settings.packed_weights,
                      bf16_steps=bf16_steps)

    return build


def config_from(values: dict) -> MemoirConfig:
    return MemoirConfig.from_dict(checked(values, "MEMOIR_CONFIG"))


# Config fields that fix the layout of a stored memory: MEMOIR_CONFIG may not contradict them.
LAYOUT = ("layer", "k", "centre", "pool")


def stored_config(manifest: Manifest, values: dict) -> MemoirConfig:
    """A stored memory's config: the one it was made with, and MEMOIR_CONFIG's other fields (tau...)
    over it; a MEMOIR_CONFIG that contradicts its layout is a StateMismatchError."""
    config_from(values)  # unknown fields
    stored = {**stored_meaning(manifest.config), "layer": manifest.layer, "k": manifest.k}
    diffs = [f"{name}: the state has {stored.get(name)}, MEMOIR_CONFIG {values[name]}" for name in LAYOUT
             if values.get(name) is not None and stored.get(name) is not None and values[name] != stored[name]]
    if diffs:
        raise StateMismatchError(
            "MEMOIR_CONFIG contradicts the stored memory's layout: " + "; ".join(diffs) + ". Drop those fields "
            "(a stored memory keeps the layout it was made with), or use a new, empty state directory.")
    return MemoirConfig.from_dict({**stored, **{n: v for n, v in values.items() if n not in LAYOUT}})


def exit_process(message: str, code: int = 3) -> None:
    """on_fatal for a server process (uvicorn --factory): say why on stderr, then exit at once.

    Used only while starting (nothing is served or acknowledged yet); the kernel drops the state
    directory's lock with the process. `memoir serve` stops its server gracefully instead."""
    sys.stderr.write(f"memoir: cannot start: {message}\n")
    sys.stderr.flush()
    os._exit(code)


class Runtime:
    """`on_fatal(message)` is called (from the loading thread) when the start fails: the model
    cannot be loaded, or the memory's state stops it (the state directory is locked by another
    server, corrupt, or made for another model or layout, or cannot be written). An operator must
    act, so a server process exits non-zero (see exit_process); without on_fatal (in-process
    tests) /ready reports the error."""

    def __init__(self, settings: Settings, builder: Builder | None = None,
                 store_factory: Callable[[Settings], MemoryStore] = open_store,
                 on_fatal: Callable[[str], None] | None = None):
        self.settings = settings
        self.builder = builder or default_builder(settings)
        self.store_factory = store_factory
        self.model_name = settings.served_model_name or models.model_name(settings.model)
        self.created = int(time.time())
        self.status = "loading"  # loading -> ready | failed
        self.error: str | None = None
        self.engine: Engine | None = None
        self.store: MemoryStore | None = None
        self.on_fatal = on_fatal
        self.fatal: str | None = None  # why the state stopped the start
        self.follower = None  # app.service.replication.Follower when the store is shared (PostgreSQL)
        self._stopping = False
        self._thread = threading.Thread(target=self._load, name="memoir-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.status == "ready"

    def ready_engine(self) -> Engine:
        if self.engine is None or self.status != "ready":
            detail = f": {self.error}" if self.error else "; try again shortly"
            raise NotReadyError(f"the model is {self.status}{detail}")
        return self.engine

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            if self.settings.threads:
                torch.set_num_threads(self.settings.threads)
            try:  # the lock, then every checksum and the log, before the (slow) model
                self.store = self.store_factory(self.settings)
                loaded = self.store.load()
                if loaded is not None:
                    stored_config(loaded.manifest, self.settings.config)
            except OSError as error:
                raise DurabilityError(f"cannot open the memory's state: {error}") from error
            memoir = self.builder(loaded)
            fingerprint = models.fingerprint(memoir.model)
            where = f"state directory {self.store.root}" if self.store.root else "the stored memory"
            if loaded is not None:
                check_manifest(loaded.manifest, Manifest.of(memoir, self.model_name, fingerprint), where)
                try:
                    restore(memoir.memory, loaded)
                except Exception as error:
                    raise StateCorruptError(f"{where}: the stored memory cannot be applied to the model: "
                                            f"{type(error).__name__}: {error}") from error
            else:
                self.store.create(Manifest.of(memoir, self.model_name, fingerprint), memoir.basis)
            trim()  # the blocks building freed (dense weights packing replaced) would otherwise stay resident
            engine = Engine(memoir, self.store, self.settings)
            engine.start()
            shared = shared_log(self.store)
            if shared is not None:  # other replicas write too: follow the log
                from .replication import Follower

                self.follower = Follower(shared, engine, self.settings.follow_poll_seconds,
                                         self.settings.replica_url)
                self.follower.start()
            self.engine = engine
            self.status = "ready"
            log.info("ready in %.1f s: %s, %d edits, memory version %d", time.perf_counter() - t0,
                     self.model_name, len(memoir.edits), memoir.version)
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            try:
                self._failed(error)
            finally:  # "failed" only once the failure is handled: whoever sees it sees on_fatal done
                self.status = "failed"

    def _failed(self, error: Exception) -> None:
        if self._stopping:  # stopped while loading (the store was closed underneath): no fault
            log.info("start-up abandoned: the server is stopping")
            return
        if not isinstance(error, (StateError, DurabilityError)):
            if isinstance(error, ModelLoadError):
                log.critical("the model cannot be loaded: %s", error)
            else:
                log.critical("start-up failed", exc_info=error)
            if self.on_fatal is None:  # in process: /ready reports it
                if self.store is not None and self.store.shared:  # let go of the database's locks: other
                    self._close_store()  # replicas may be waiting for this one to create the memory
                return
            # A process that cannot serve exits, so Docker's restart policy and a Kubernetes
            # liveness probe see a failing service, not one that answers /health forever.
            self.fatal = self.error
            self._close_store()
            self.on_fatal(self.error)
            return
        self.fatal = self.error
        log.critical("the memory's state stops the start: %s", self.error)
        self._close_store()
        if self.on_fatal is not None:
            self.on_fatal(self.error)

    def _close_store(self) -> None:
        if self.store is not None:
            try:
                self.store.close()
            except Exception:  # closing after a failure: the failure is what matters
                log.exception("closing the store failed")

    def stop(self, timeout: float = 30.0) -> None:
        """Blocking; run it off the event loop."""
        self._stopping = True
        if self.follower is not None:
            self.follower.stop()
        if self.engine is not None:
            self.engine.stop(timeout)
        self._close_store()  # a snapshot in flight is abandoned: the journal still holds its edits
