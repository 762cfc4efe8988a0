"""Server settings: every option is an environment variable with the MEMOIR_ prefix and a `memoir serve` flag."""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from memoir_core.config import checked, read_file

log = logging.getLogger(__name__)
PREFIX = "MEMOIR_"
# MEMOIR_* variables that are not settings: the client's server URL, the model cache, the
# PostgreSQL password of deploy/, and the tiny test server's hooks (tests/support/tiny_server.py)
OTHER_VARIABLES = ("MEMOIR_URL", "MEMOIR_CACHE_DIR", "MEMOIR_PG_PASSWORD")
OTHER_PREFIXES = ("MEMOIR_TINY_",)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    # what to serve
    model: str | None = Field(None, description="Hugging Face id or folder; empty: the embedded SmolLM2-135M-Instruct")
    served_model_name: str | None = Field(None, description="name in /v1/models; default: the model's name")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    engine: Literal["builtin", "vllm"] = Field("builtin", description="what generates: memoir's own decoder, "
                                               "or vLLM's engine with the memory inside it (the vllm extra; "
                                               "docs/engines.md)")
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16")
    mmap_threshold: int = Field(32 << 20, ge=0, description="bytes: host blocks this large are each their own "
                                "mapping, given back when freed (glibc); smaller ones come from the heap, which "
                                "malloc_trim returns after each edit. 0: glibc's dynamic threshold "
                                "(app/service/hostmem.py)")
    packed_weights: bool = Field(True, description="fp32 on a CPU: linear layers read their weights in oneDNN's "
                                 "blocked layout, for faster decoding (docs/engines.md); off: plain PyTorch")
    bf16_steps: bool = Field(False, description="with packed weights, on a CPU with native bf16: decode steps "
                             "multiply by bf16 copies of the weights (faster; the copies cost RAM); "
                             "prompts, and so every routing decision, stay fp32. Off by default: a bf16 step's "
                             "greedy text can depend on the other requests in its batch, so an unrelated "
                             "request would not always be answered exactly as before (docs/engines.md)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's (one per core). "
                                "On a CPU shared with other work, fewer threads than cores is often much faster")
    # MemoirConfig fields for a fresh memory (a stored memory keeps its layout, app/service/runtime.py):
    # MEMOIR_CONFIG='{"tau": 0.45}', or the path of a JSON file (what `memoir calibrate` writes)
    config: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict, description="a JSON file of "
                                                        "MemoirConfig fields for a new memory, e.g. calibrate's")

    # where the memory lives (app/service/stores.py): a state directory, MEMOIR_STATE_DIR or by default
    # ~/.local/share/memoir/state/<model>; MEMOIR_STORE=memory keeps it in RAM only (lost on exit)
    state_dir: Path | None = Field(None, description="where the memory is kept across restarts; default: "
                                   "~/.local/share/memoir/state/<model>")
    store: Literal["auto", "memory", "dir", "postgres"] = Field("auto", description="memory: edits in RAM only, "
                                                                "lost at exit; auto: the state directory, or "
                                                                "PostgreSQL when a state URL is given")
    # a background snapshot compacts the journal once it holds max(min_bytes, ratio x the last snapshot)
    snapshot_min_bytes: int = Field(64 << 20, ge=0)
    snapshot_ratio: float = Field(1.0, ge=0)
    accept_state_loss: bool = Field(False, description="start even though the state directory shows acknowledged "
                                    "edits lost (a damaged last record, a journal cut short): they are dropped, "
                                    "said at CRITICAL, and the damaged bytes kept aside. Otherwise such a start "
                                    "is refused (exit 3)")
    # many replicas on one memory (docs/replicas.md): the edit log in PostgreSQL instead of a directory
    state_url: SecretStr | None = Field(None, description="postgresql://... : keep the memory in PostgreSQL, "
                                        "shared by every replica that names the same database")
    replica_name: str | None = Field(None, description="this replica's name in the database; default host-pid")
    replica_url: str | None = Field(None, description="where other replicas and operators reach this one")
    follow_poll_seconds: float = Field(1.0, gt=0, description="replicas poll the log this often besides LISTEN")
    min_version_wait: float = Field(2.0, ge=0, description="seconds a request with min_version waits for it")
    cut_off_grace: float = Field(10.0, ge=0, description="seconds a replica that cannot read the log stays ready "
                                 "(serving the memory it has) before /ready says 503")
    pg_snapshot_every: int = Field(100, ge=1, description="log entries between two catch-up snapshots")
    pg_large_delta_bytes: int = Field(16 << 20, ge=0, description="W_m deltas larger than this are kept as "
                                      "PostgreSQL large objects rather than bytea values")

    # network
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = Field("info", description="debug, info, warning, error")

    # scheduling
    max_batch: int = Field(16, ge=1, description="sequences decoded together")
    max_waiting: int = Field(256, ge=1, description="generation sequences queued or running before 429")
    edit_queue_size: int = Field(16, ge=1, description="edit and delete requests waiting before 429")
    max_edits_per_request: int = Field(64, ge=1)
    max_edit_seconds: float | None = Field(None, gt=0, description="per edit; default: the config's")
    edit_slice_ms: float = Field(15.0, ge=0, description="a training edit hands the engine thread back at least "
                                 "this often, even mid-forward, so a new request waits about this long for its "
                                 "prefill (memoir_core/timeslice.py); 0: after each whole optimisation step")

    # limits on input
    max_body_bytes: int = Field(1 << 20, ge=1024)
    # slow clients (app/http/slowclients.py, under `memoir serve`); 0 turns one off
    header_timeout: float = Field(10.0, ge=0, description="seconds a request's headers may take to arrive")
    body_timeout: float = Field(60.0, ge=0, description="seconds a request's body may take, after its headers")
    max_connections_per_ip: int = Field(128, ge=0, description="open connections from one client address")
    max_prompt_tokens: int = Field(4096, ge=1, description="generation prompt, after the chat template")
    max_new_tokens: int = Field(2048, ge=1, description="upper bound a request may ask for")
    default_max_new_tokens: int = Field(256, ge=1, description="/generate and chat when the request names none")

    # operations (auth, logs, shutdown, edit limits): see docs/operations.md
    api_key: SecretStr | None = Field(None, description="client key: generation and /v1 routes need it")
    api_keys: SecretStr | None = Field(None, description='named client keys, "name:key,name:key"')
    admin_key: SecretStr | None = Field(None, description="admin key: every route that changes or reveals the "
                                        "memory; also grants the client routes")
    admin_keys: SecretStr | None = Field(None, description='named admin keys, "alice:key1,bob:key2"; the name is '
                                         "recorded as the author of the edits made with the key")
    allow_insecure: bool = Field(False, description="listen beyond 127.0.0.1 without an admin key")
    memory_detail: Literal["admin", "all"] = Field("admin", description="who sees edit ids and overlaps in "
                                                   "answers' `memory`: admin keys only (client keys see on/off and "
                                                   "the version), or every caller")
    metrics_auth: bool = Field(False, description="/metrics needs an admin key (default: open, like /health)")
    log_format: Literal["json", "text"] = "json"
    shutdown_timeout: float = Field(30.0, gt=0, description="seconds a SIGTERM waits for requests in flight "
                                    "and the running edit before the process exits")
    max_edit_steps: int | None = Field(None, ge=1, description="optimisation steps per edit; default: the config's")
    max_edit_prompt_tokens: int | None = Field(None, ge=1, description="edit prompt; default: the config's")
    max_target_tokens: int | None = Field(None, ge=1, description="edit target_new; default: the config's")
    max_blast_radius: int | None = Field(None, ge=0, description="refuse an edit that would switch the memory on "
                                         "for more than this many of the background texts; default: no limit")
    max_import_rows: int = Field(10_000, ge=1, description="rows in one POST /edits:import")
    preview_max_new_tokens: int = Field(16, ge=1, le=256, description="tokens of each answer in a dry run")

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, value: Any) -> dict[str, Any]:
        if isinstance(value, str):  # one door for files and MEMOIR_CONFIG: memoir_core.config
            if not value.lstrip().startswith("{"):
                return read_file(value)
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"MEMOIR_CONFIG is neither a JSON object nor a file name: {error}") from None
        return checked(value, "MEMOIR_CONFIG")

    @property
    def new_tokens_default(self) -> int:
        """max_new_tokens when a request names none: the default, within the limit."""
        return min(self.default_max_new_tokens, self.max_new_tokens)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per MEMOIR_* variable that no setting reads: a misspelt one would otherwise do
    nothing, silently. Each names the closest setting's variable."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    warnings = []
    for name in sorted(environ):
        if (not name.upper().startswith(PREFIX) or name.upper() in known or name in OTHER_VARIABLES
                or name.startswith(OTHER_PREFIXES)):
            continue
        close = difflib.get_close_matches(name[len(PREFIX):].lower(), list(Settings.model_fields), n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{close[0].upper()}?" if close else ""
        warnings.append(f"{name} is not a memoir setting and is ignored{hint}")
    return warnings


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    for warning in unknown_variables(environ):
        log.warning("%s", warning)
