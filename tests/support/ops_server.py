"""A tiny-model server run the way `memoir serve` runs one (app.http.server.serve: the key and address
checks, structured logs, the orderly stop on SIGTERM), for the operations tests:

    python -m tests.support.ops_server

MEMOIR_* variables configure it as they do the real server (MEMOIR_STATE_DIR keeps the memory in a
state directory); MEMOIR_TINY_CONFIG (JSON) overrides the tiny model's MemoirConfig fields.
"""

from __future__ import annotations

import json
import os
import sys

from app.http.server import serve
from app.service import stores
from app.settings import Settings
from memoir_core.config import MemoirConfig
from memoir_core.memoir import Memoir

from .tiny import make_memoir, tiny_model, tiny_tokenizer


def build(loaded):
    if loaded is None:
        return make_memoir(**json.loads(os.environ.get("MEMOIR_TINY_CONFIG", "{}")))
    tok = tiny_tokenizer()  # a restart: the stored basis and config on the same seeded tiny model
    return Memoir(tiny_model("llama", len(tok)), tok, MemoirConfig.from_dict(loaded.manifest.config),
                  basis=loaded.basis)


def make_app(settings: Settings):
    from app.http.main import create_app

    return create_app(settings, builder=build)


def main() -> int:
    if "dir" not in stores.STORES:  # until the server registers the state directory store itself
        from memoir_core.store.directory import DirectoryStore

        stores.register("dir", lambda settings: DirectoryStore(str(settings.state_dir)))
    settings = Settings()
    if settings.served_model_name is None:
        settings = settings.model_copy(update={"served_model_name": "tiny"})
    return serve(settings, make_app)


if __name__ == "__main__":
    sys.exit(main())
