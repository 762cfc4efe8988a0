"""Which decoder the engine thread drives (Settings.engine): memoir's own, or vLLM's engine.

Both have memoir_core.generate.Decoder's surface (room, running, add, step, cancel); the engine
thread, the writer, edits, state, replicas and the HTTP API are the same in front of either.
"""

from __future__ import annotations

import logging

from app.settings import Settings
from memoir_core import models
from memoir_core.memoir import Memoir

log = logging.getLogger(__name__)


def make(memoir: Memoir, settings: Settings):
    if settings.engine == "builtin":
        return memoir.decoder(settings.max_batch)
    from memoir_vllm import offline
    from memoir_vllm.decoder import VllmDecoder

    offline.cpu_env(threads=settings.threads)
    dtype = str(next(memoir.model.parameters()).dtype).removeprefix("torch.")  # the dtype memoir serves in
    llm = offline.engine(models.resolve(settings.model), dtype=dtype, max_num_seqs=settings.max_batch)
    log.info("vLLM engine up: %s, %s, memory on %s", settings.model or models.DEFAULT_MODEL, dtype,
             memoir.config.layer)
    return VllmDecoder(memoir, llm, settings.max_batch)


def fresh(decoder, memoir: Memoir, settings: Settings):
    """A decoder to go on with after a step failed: the builtin one is rebuilt (its batch is
    gone), vLLM's engine is kept with its requests aborted."""
    if settings.engine == "builtin":
        return memoir.decoder(settings.max_batch)
    decoder.reset()
    return decoder


def check(decoder, params) -> None:
    """Refuse, per request, what this decoder does not serve (the builtin one serves all)."""
    refuse = getattr(decoder, "check", None)
    if refuse is not None:
        refuse(params)


def constrains_output(decoder) -> bool:
    """Whether the decoder enforces an OutputConstraint itself (vLLM's structured outputs); the
    builtin one needs a memoir Matcher on the sequence."""
    return bool(getattr(decoder, "constrains_output", False))


def close(decoder) -> None:
    shutdown = getattr(decoder, "close", None)
    if shutdown is not None:
        shutdown()
