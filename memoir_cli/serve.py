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
    p.add_argument("--store", choices=("auto", "dir", "memory", "postgres"),
                   help="memory: keep edits in RAM only, lost at exit [MEMOIR_STORE, auto: the state directory, "
                   "or PostgreSQL when a state URL is given]")
    p.add_argument("--state-url", help="postgresql://... : the memory in PostgreSQL, shared by every replica on it "
                   "[MEMOIR_STATE_URL; docs/replicas.md]")
    p.add_argument("--accept-state-loss", action="store_true", default=None,
                   help="start even though the state directory shows acknowledged edits lost (refused otherwise) "
                   "[MEMOIR_ACCEPT_STATE_LOSS]")
    p.add_argument("--replica-name", help="this replica's name in the database [MEMOIR_REPLICA_NAME, host-pid]")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... [MEMOIR_DEVICE]")
    p.add_argument("--dtype", help="auto, float32, bfloat16, float16 [MEMOIR_DTYPE]")
    p.add_argument("--threads", type=int, help="torch CPU threads [MEMOIR_THREADS; default: one per core]")
    p.add_argument("--max-batch", type=int, help="sequences decoded together [MEMOIR_MAX_BATCH, 16]")
    p.add_argument("--edit-queue-size", type=int, help="edit requests waiting before 429 [MEMOIR_EDIT_QUEUE_SIZE, 16]")
    p.add_argument("--log-level", help="[MEMOIR_LOG_LEVEL, info]")
    p.add_argument("--log-format", choices=("json", "text"), help="[MEMOIR_LOG_FORMAT, json]")
    p.add_argument("--allow-insecure", action="store_true", default=None,
                   help="listen beyond 127.0.0.1 without an admin key [MEMOIR_ALLOW_INSECURE]")
    p.add_argument("--header-timeout", type=float,
                   help="seconds a request's headers may take [MEMOIR_HEADER_TIMEOUT, 10; 0: no limit]")
    p.add_argument("--body-timeout", type=float,
                   help="seconds a request's body may take after its headers [MEMOIR_BODY_TIMEOUT, 60; 0: no limit]")
    p.add_argument("--max-connections-per-ip", type=int,
                   help="open connections from one client address [MEMOIR_MAX_CONNECTIONS_PER_IP, 128; 0: no cap]")
    p.add_argument("--shutdown-timeout", type=float,
                   help="seconds SIGTERM waits for requests in flight [MEMOIR_SHUTDOWN_TIMEOUT, 30]")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from app.server import serve
    from app.settings import Settings

    names = ("model", "served_model_name", "host", "port", "state_dir", "store", "device", "dtype", "threads",
             "max_batch", "edit_queue_size", "log_level", "log_format", "allow_insecure", "shutdown_timeout",
             "state_url", "replica_name", "accept_state_loss", "header_timeout", "body_timeout",
             "max_connections_per_ip")
    settings = Settings(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})
    # An app object (not an import string) runs in this process: one worker, which is what a
    # single model owner needs.
    return serve(settings)
