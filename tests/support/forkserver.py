"""A Python with the server's imports done, that forks tiny-model server processes on request.

A kill -9 loop restarts the server many times, and on a small machine a restart is mostly
importing torch and transformers (about 10 s on a busy 2-core machine, against about 2 s for
the rest). A forked child runs exactly what `uvicorn tests.support.tiny_server:app --factory` runs, in
a process of its own that the test kills with SIGKILL; only the exec and the imports are
skipped. The parent starts no threads and runs no torch op before forking, so the children are
sound (torch's thread pools are created on first use, in the child).

Protocol (one JSON object a line): the test writes {"port", "log", "env"}; this process answers
{"pid"} and reaps its children. EOF on stdin ends it.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _reap(signum, frame) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _child(request: dict) -> None:
    import uvicorn

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.environ.update(request["env"])
    # asyncio's loop, as `memoir serve` runs (app/http/server.py), not uvloop where it is installed
    uvicorn.run("tests.support.tiny_server:app", factory=True, host="127.0.0.1", port=request["port"],
                log_level="warning", loop="asyncio")


def main() -> None:
    # What a tiny server imports; none of it starts a thread.
    import fastapi  # noqa: F401
    import tokenizers  # noqa: F401
    import transformers  # noqa: F401
    import uvicorn  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    import app.http.main  # noqa: F401
    import memoir_core.memoir  # noqa: F401
    import memoir_core.store  # noqa: F401
    import tests.support.tiny_server  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(request)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    main()
