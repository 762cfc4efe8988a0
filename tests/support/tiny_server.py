"""An app on a tiny random model, for `uvicorn tests.support.tiny_server:app --factory` in tests.

MEMOIR_* variables configure it as they do the real server; MEMOIR_TINY_CONFIG (JSON) overrides
the tiny model's MemoirConfig fields. A stored memory (MEMOIR_STATE_DIR) is rebuilt on its own
basis and config, as the real server does, on the weights of seed MEMOIR_TINY_SEED (0; another
seed is another base model). A state error exits the process, as `uvicorn --factory` does.
"""

from __future__ import annotations

import json
import os
import time

from app.http.main import create_app
from app.service.runtime import exit_process
from app.settings import Settings

from .tiny import make_memoir, tiny_model, tiny_tokenizer


def slow_edits(memoir, seconds: float):
    """Test hook (MEMOIR_TINY_EDIT_DELAY): each edit trains `seconds` longer, in small steps, so a
    test can kill a server while an edit is training."""
    propose = memoir.propose

    def slow(*args, **kwargs):
        gen = propose(*args, **kwargs)
        result = yield from gen
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            time.sleep(0.01)
            yield
        return result

    memoir.propose = slow
    return memoir


def slow_commits(memoir, seconds: float):
    """Test hook (MEMOIR_TINY_COMMIT_DELAY): an edit, once the store has it (durable, and in a
    shared log visible to the other replicas), waits `seconds` before it is applied here and
    acknowledged, so a test can kill a server between the two."""
    commit = memoir.commit

    def slow(proposal):
        time.sleep(seconds)
        return commit(proposal)

    memoir.commit = slow
    return memoir


def builder(seed: int = 0, overrides: dict | None = None):
    """Builds the tiny Memoir: fresh (weights of seed 0), or on a stored memory's basis and config."""
    delay = float(os.environ.get("MEMOIR_TINY_EDIT_DELAY", "0"))
    commit_delay = float(os.environ.get("MEMOIR_TINY_COMMIT_DELAY", "0"))

    def build(loaded):
        memoir = plain(loaded)
        if delay:
            slow_edits(memoir, delay)
        return slow_commits(memoir, commit_delay) if commit_delay else memoir

    def plain(loaded):
        if loaded is None:
            return make_memoir(**(overrides or {}))
        from memoir_core.config import MemoirConfig
        from memoir_core.memoir import Memoir

        tok = tiny_tokenizer()
        return Memoir(tiny_model("llama", len(tok), seed=seed), tok, MemoirConfig.from_dict(loaded.manifest.config),
                      basis=loaded.basis)

    return build


def app():
    overrides = json.loads(os.environ.get("MEMOIR_TINY_CONFIG", "{}"))
    build = builder(int(os.environ.get("MEMOIR_TINY_SEED", "0")), overrides)
    settings = Settings()
    if settings.served_model_name is None:
        settings = settings.model_copy(update={"served_model_name": "tiny"})
    return create_app(settings, builder=build, on_fatal=exit_process)
