"""Start-up and shut-down: open the store, load the model, rebuild or create the memory, start
the engine — in a background thread, so /health answers at once and /ready says when it is done.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import torch

from memoir_core import models
from memoir_core.config import MemoirConfig
from memoir_core.errors import StateMismatchError
from memoir_core.memoir import Memoir
from memoir_core.state import Loaded, Manifest, MemoryStore, restore

from .engine import Engine
from .errors import NotReadyError
from .settings import Settings
from .stores import open_store

log = logging.getLogger(__name__)

# Builds a Memoir with an empty memory: on the stored basis and config when a memory was
# loaded, fresh otherwise. Tests pass one that builds a tiny model.
Builder = Callable[[Loaded | None], Memoir]


def default_builder(settings: Settings) -> Builder:
    def build(loaded: Loaded | None) -> Memoir:
        model, tokenizer = models.load(settings.model, settings.device, settings.dtype)
        if loaded is not None:
            return Memoir(model, tokenizer, MemoirConfig.from_dict(loaded.manifest.config), basis=loaded.basis)
        return Memoir(model, tokenizer, config_from(settings.config))

    return build


def config_from(values: dict) -> MemoirConfig:
    known = {f.name for f in dataclasses.fields(MemoirConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"MEMOIR_CONFIG has unknown fields: {', '.join(unknown)}")
    return MemoirConfig.from_dict(values)


class Runtime:
    def __init__(self, settings: Settings, builder: Builder | None = None,
                 store_factory: Callable[[Settings], MemoryStore] = open_store):
        self.settings = settings
        self.builder = builder or default_builder(settings)
        self.store_factory = store_factory
        self.model_name = settings.served_model_name or models.model_name(settings.model)
        self.created = int(time.time())
        self.status = "loading"  # loading -> ready | failed
        self.error: str | None = None
        self.engine: Engine | None = None
        self.store: MemoryStore | None = None
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
            self.store = self.store_factory(self.settings)
            loaded = self.store.load()
            memoir = self.builder(loaded)
            fingerprint = models.fingerprint(memoir.model)
            if loaded is not None:
                check_compatible(loaded.manifest, self.model_name, fingerprint)
                restore(memoir, loaded)
            else:
                self.store.create(Manifest.of(memoir, self.model_name, fingerprint), memoir.basis)
            engine = Engine(memoir, self.store, self.settings)
            engine.start()
            self.engine = engine
            self.status = "ready"
            log.info("ready in %.1f s: %s, %d edits, memory version %d", time.perf_counter() - t0,
                     self.model_name, len(memoir.edits), memoir.version)
        except Exception as error:
            self.status, self.error = "failed", f"{type(error).__name__}: {error}"
            log.exception("start-up failed")

    def stop(self, timeout: float = 30.0) -> None:
        """Blocking; run it off the event loop."""
        if self.engine is not None:
            self.engine.stop(timeout)
        if self.store is not None:
            self.store.close()


def check_compatible(manifest: Manifest, model_name: str, fingerprint: str) -> None:
    if manifest.fingerprint != fingerprint:
        raise StateMismatchError(
            f"the stored memory was made for the model {manifest.model!r} (weights fingerprint "
            f"{manifest.fingerprint}), but {model_name!r} has fingerprint {fingerprint}: serve that model, "
            "or point MEMOIR_STATE_DIR at another directory")
