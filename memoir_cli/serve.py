"""`memoir serve`: the HTTP server on one model, in one process with one worker.

Every option defaults to its MEMOIR_* environment variable (app/settings.py), then to the
built-in default; an option given here wins over the environment.
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="serve the model over HTTP (default: SmolLM2-135M-Instruct on 127.0.0.1:8000)")
    p.add_argument("--model", help="Hugging Face id or folder [MEMOIR_MODEL]")
    p.add_argument("--served-model-name", help="the name in /v1/models [MEMOIR_SERVED_MODEL_NAME]")
    p.add_argument("--host", help="address to listen on [MEMOIR_HOST, 127.0.0.1]")
    p.add_argument("--port", type=int, help="[MEMOIR_PORT, 8000]")
    p.add_argument("--state-dir", help="where the memory is kept across restarts [MEMOIR_STATE_DIR; default: "
                   "~/.local/share/memoir/state/<model>]")
    p.add_argument("--store", choices=("auto", "dir", "memory"),
                   help="memory: keep edits in RAM only, lost at exit [MEMOIR_STORE, auto: the state directory]")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... [MEMOIR_DEVICE]")
    p.add_argument("--dtype", help="auto, float32, bfloat16, float16 [MEMOIR_DTYPE]")
    p.add_argument("--threads", type=int, help="torch CPU threads [MEMOIR_THREADS; default: one per core]")
    p.add_argument("--max-batch", type=int, help="sequences decoded together [MEMOIR_MAX_BATCH, 16]")
    p.add_argument("--edit-queue-size", type=int, help="edit requests waiting before 429 [MEMOIR_EDIT_QUEUE_SIZE, 16]")
    p.add_argument("--log-level", help="[MEMOIR_LOG_LEVEL, info]")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import sys

    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    names = ("model", "served_model_name", "host", "port", "state_dir", "store", "device", "dtype", "threads",
             "max_batch", "edit_queue_size", "log_level")
    settings = Settings(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})

    def stop(message: str) -> None:  # the memory's state stops the start: shut down, then exit non-zero
        server.should_exit = True

    # An app object (not an import string) runs in this process: one worker, which is what a
    # single model owner needs.
    app = create_app(settings, on_fatal=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level.lower()))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    fatal = app.state.runtime.fatal
    if fatal:
        print(f"memoir serve: cannot start: {fatal}", file=sys.stderr)
        return 3
    return 0 if server.started else 3  # 3: uvicorn's code for a failed start (port in use...)
