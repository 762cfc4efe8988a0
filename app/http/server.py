"""Run the app under uvicorn, as `memoir serve` does: one worker, structured logs, the address
checked against the keys, and an orderly stop on SIGTERM.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, closes the idle ones and waits for
the requests in flight, streams included, up to MEMOIR_SHUTDOWN_TIMEOUT; then the app's
lifespan ends: the engine lets an edit that is still training finish in what is left of the
timeout, refuses what is queued, and the store is closed (its journal flushed). The process then
exits 0. A second Ctrl-C forces the exit. When the memory's state stops the start (the state
directory is locked by another server, corrupt, or made for another model), the server stops
the same way and the process exits 3 with the reason on stderr.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from app.settings import Settings

log = logging.getLogger(__name__)
_stopping: dict[str, float | None] = {"at": None}


def time_left(settings: Settings) -> float:
    """What remains of the shutdown timeout (all of it if no signal was seen), at least 1 s."""
    at = _stopping["at"]
    spent = 0.0 if at is None else time.monotonic() - at
    return max(1.0, settings.shutdown_timeout - spent)


def serve(settings: Settings, make_app: Callable[[Settings], Any]) -> int:
    """Serve make_app(settings) until SIGTERM, then end the process with status 0 (3 when the
    memory's state stopped the start); returns 2 (without serving) when the keys or the address
    cannot be used. make_app is app.http.main.create_app, passed in: main imports this module."""
    import uvicorn

    from app.service import logs
    from app.service.hostmem import pin_mmap_threshold

    from .auth import ConfigError, Keys, check_exposure, warn_open_routes

    logs.configure(settings.log_format, settings.log_level, replace=True)
    if settings.mmap_threshold:  # before the model loads: freed tensors must not pin RAM per stored edit
        pin_mmap_threshold(settings.mmap_threshold)
    try:
        keys = Keys.from_settings(settings)
        check_exposure(settings.host, keys, settings.allow_insecure)
        app = make_app(settings)
    except (ConfigError, ValueError) as error:
        print(f"memoir serve: error: {error}", file=sys.stderr)
        return 2
    warn_open_routes(keys, settings.allow_insecure)
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    running: list[uvicorn.Server] = []
    if runtime is not None and runtime.on_fatal is None:  # a state error: stop, then exit 3 (below)
        runtime.on_fatal = lambda message: setattr(running[0], "should_exit", True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if _stopping["at"] is None:
                _stopping["at"] = time.monotonic()
                logs.event(log, "shutdown", signal=signal.Signals(sig).name, timeout_s=settings.shutdown_timeout,
                           connections=len(self.server_state.connections), tasks=len(self.server_state.tasks))
            super().handle_exit(sig, frame)

    # One worker: the model and its memory live in this process, and one thread owns them.
    from .slowclients import guarded

    # loop="asyncio": uvloop arrives with vLLM's dependencies, and "auto" would take it, changing how
    # the server meets a full descriptor table (tests/server/test_server_faults.py) with the extra installed.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1, log_config=None, loop="asyncio",
                            http=guarded(settings),
                            access_log=False, log_level=settings.log_level.lower(), lifespan="on",
                            timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout)))
    # uvicorn re-raises the signal it stopped on once it is done (so that the default action
    # kills the process); after an orderly stop the exit status is 0 instead.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    running.append(Server(config))
    running[0].run()
    code = 0
    if runtime is not None and runtime.fatal:
        print(f"memoir serve: cannot start: {runtime.fatal}", file=sys.stderr)
        code = 3
    # The store is closed and every answer sent: skip the interpreter's teardown of torch and
    # friends, which takes seconds on a busy machine and has nothing left to save.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
