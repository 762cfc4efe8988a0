"""Limits on an edit that the operator sets (MEMOIR_MAX_EDIT_STEPS, MEMOIR_MAX_EDIT_SECONDS,
MEMOIR_MAX_EDIT_PROMPT_TOKENS, MEMOIR_MAX_TARGET_TOKENS), applied over the memory's config.

They bound the work one request can cause; they are not part of the memory: the stored config
keeps its own values, and these apply in this process only. The other limits are checked where
the input arrives: body size (app/http/middleware.py, 413), generation prompt and max_new_tokens
(app/service/engine.py and app/http/deps.py, 400), sequences waiting (MEMOIR_MAX_WAITING) and edit requests
queued (MEMOIR_EDIT_QUEUE_SIZE), 429 with Retry-After (app/service/engine.py).
"""

from __future__ import annotations

import logging

from app.settings import Settings
from memoir_core.config import MemoirConfig
from memoir_core.memoir import Memoir

log = logging.getLogger(__name__)

# setting -> the MemoirConfig field it overrides
EDIT_LIMITS = {
    "max_edit_steps": "max_steps",
    "max_edit_seconds": "max_edit_seconds",
    "max_edit_prompt_tokens": "max_prompt_tokens",
    "max_target_tokens": "max_target_tokens",
}


def apply(memoir: Memoir, settings: Settings) -> None:
    """Once, when the engine is built on a new memory (after its config was stored)."""
    limits = over(memoir.config, settings)
    for field, value in limits.items():
        log.info("edit limit %s = %s (the memory's config says %s)", field, value, getattr(memoir.config, field))
    if limits:
        memoir.bound(**limits)


def over(config: MemoirConfig, settings: Settings) -> dict[str, float | int]:
    """The config fields the settings change."""
    values = {field: getattr(settings, setting, None) for setting, field in EDIT_LIMITS.items()}
    return {f: v for f, v in values.items() if v is not None and getattr(config, f) != v}
