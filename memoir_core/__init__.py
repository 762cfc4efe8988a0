"""MEMOIR as a library: a causal LM whose one MLP projection carries a residual memory of edits.

    from memoir_core import Memoir, SamplingParams, load_model

    model, tokenizer = load_model()          # the default model, or load_model("org/name")
    m = Memoir(model, tokenizer)
    m.edit("Who is the CEO of Zorblax Industries?", "Marta Quillon")

Committer(m, store).edit(...) keeps the server's commit rule: each edit is written to a
MemoryStore (memoir_core.store.DirectoryStore, or PostgreSQL) before it is applied.

The names below load on first use: importing a light module (memoir_core.config) must not pull
in torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .onednn import bound_caches

bound_caches()  # before torch's first bf16 product: see onednn.py

# public name -> (module, attribute)
_PUBLIC = {
    "Memoir": ("memoir", "Memoir"),
    "Committer": ("committer", "Committer"),
    "MemoirConfig": ("config", "MemoirConfig"),
    "SamplingParams": ("generate", "SamplingParams"),
    "EditRecord": ("records", "EditRecord"),
    "ResidualMemory": ("memory", "ResidualMemory"),
    "MemoirError": ("errors", "MemoirError"),
    "load_model": ("models", "load"),
}
__all__ = ["Committer", "EditRecord", "Memoir", "MemoirConfig", "MemoirError", "ResidualMemory", "SamplingParams", "load_model"]

if TYPE_CHECKING:
    from .committer import Committer
    from .config import MemoirConfig
    from .errors import MemoirError
    from .generate import SamplingParams
    from .memoir import Memoir
    from .memory_layer import ResidualMemory
    from .models import load as load_model
    from .records import EditRecord


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'memoir_core' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
