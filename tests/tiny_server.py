"""An app on a tiny random model, for `uvicorn tests.tiny_server:app --factory` in tests.

MEMOIR_* variables configure it as they do the real server; MEMOIR_TINY_CONFIG (JSON) overrides
the tiny model's MemoirConfig fields.
"""

from __future__ import annotations

import json
import os

from app.main import create_app
from app.settings import Settings

from .conftest import make_memoir


def app():
    overrides = json.loads(os.environ.get("MEMOIR_TINY_CONFIG", "{}"))

    def build(loaded):
        return make_memoir(**overrides)

    settings = Settings()
    if settings.served_model_name is None:
        settings = settings.model_copy(update={"served_model_name": "tiny"})
    return create_app(settings, builder=build)
