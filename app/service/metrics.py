"""Prometheus metrics (served by GET /metrics, app/http/routes/metrics.py).

Names follow vLLM's (`vllm:num_requests_running` -> `memoir:num_requests_running`, ...) so that
dashboards and alerts written for vLLM carry over by changing the prefix; the HTTP metrics use the
names of prometheus-fastapi-instrumentator, which vLLM's server also exposes.

  HTTP          http_requests_total{handler,method,status}
                http_request_duration_seconds{handler,method,status}      (histogram)
  generation    memoir:num_requests_running / memoir:num_requests_waiting (sequences)
                memoir:time_to_first_token_seconds, memoir:e2e_request_latency_seconds,
                memoir:time_per_output_token_seconds                      (histograms)
                memoir:prompt_tokens_total, memoir:generation_tokens_total
                memoir:request_success_total{finished_reason}
                memoir:request_prompt_tokens, memoir:request_generation_tokens (histograms)
  memory        memoir:edits_total{outcome}  applied | replayed | rejected | failed
                memoir:edit_duration_seconds, memoir:edit_steps          (histograms, applied edits)
                memoir:edit_rollbacks_total{outcome}  removed | rejected | failed
                memoir:active_edits, memoir:memory_version, memoir:edit_tensor_bytes,
                memoir:edit_ram_bytes_per_edit
                memoir:edit_queue_requests, memoir:edit_queue_edits
                memoir:routing_decisions_total{decision}  on | off        (one per sequence)
                memoir:routing_best_overlap                               (histogram, one per sequence)
                memoir:writer_failed, memoir:ready
  replicas      memoir:replication_log_head, memoir:replication_lag_versions, memoir:replication_caught_up
                (only with a shared store: the edit log in PostgreSQL, docs/replicas.md)
  store         memoir:snapshot_duration_seconds (histogram), memoir:snapshots_total{outcome},
                memoir:snapshot_last_success_timestamp_seconds
                memoir:store_<name> for every number in the store's stats()
  host heap     memoir:host_heap_in_use_bytes, memoir:host_heap_free_bytes, memoir:host_heap_mmapped_bytes
                (glibc's mallinfo2: what the process holds against what its allocator keeps)
  process       process_* and python_* (prometheus_client's collectors)

Snapshots are observed through the store's observer hook (MemoryStore.observe, given
observe_snapshot by observe_store). Gauges are read from the
running server when /metrics is scraped.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from memoir_core.capacity import estimate, packed_masks
from memoir_core.state import MemoryStore

from . import hostmem

log = logging.getLogger(__name__)

disable_created_metrics()  # no *_created series: the classic text format, as Prometheus reads it
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
TPOT = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
EDIT_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OVERLAP = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)
SNAPSHOT = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# -- HTTP ---------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests by route template, method and status code.",
                        ["handler", "method", "status"], registry=REGISTRY)
HTTP_DURATION = Histogram("http_request_duration_seconds", "HTTP request duration, until the last byte of the "
                          "response (streams included).", ["handler", "method", "status"], buckets=LATENCY,
                          registry=REGISTRY)

# -- generation -----------------------------------------------------------------------------------
TIME_TO_FIRST_TOKEN = Histogram("memoir:time_to_first_token_seconds", "Time from a sequence's arrival at the "
                                "engine to its first token (queue and prefill).", buckets=TTFT, registry=REGISTRY)
E2E_LATENCY = Histogram("memoir:e2e_request_latency_seconds", "Time from a sequence's arrival at the engine to its "
                        "last token.", buckets=LATENCY, registry=REGISTRY)
TIME_PER_OUTPUT_TOKEN = Histogram("memoir:time_per_output_token_seconds", "Mean time between a sequence's tokens "
                                  "after the first.", buckets=TPOT, registry=REGISTRY)
PROMPT_TOKENS = Counter("memoir:prompt_tokens", "Prefilled prompt tokens.", registry=REGISTRY)
GENERATION_TOKENS = Counter("memoir:generation_tokens", "Generated tokens.", registry=REGISTRY)
REQUEST_ABORTED = Counter("memoir:request_aborted", "Sequences cancelled before they finished (the client "
                          "went away, or its request failed).", registry=REGISTRY)
REQUEST_SUCCESS = Counter("memoir:request_success", "Sequences that finished, by reason (stop, length).",
                          ["finished_reason"], registry=REGISTRY)
REQUEST_PROMPT_TOKENS = Histogram("memoir:request_prompt_tokens", "Prompt tokens per sequence.", buckets=TOKENS,
                                  registry=REGISTRY)
REQUEST_GENERATION_TOKENS = Histogram("memoir:request_generation_tokens", "Generated tokens per finished "
                                      "sequence.", buckets=TOKENS, registry=REGISTRY)

# -- the memory -----------------------------------------------------------------------------------
EDITS = Counter("memoir:edits", "Edits by outcome: applied (trained, durable, visible), replayed (an idempotent "
                "retry), rejected (bad input, conflict or policy), failed (optimisation, store or shutdown).",
                ["outcome"], registry=REGISTRY)
EDIT_DURATION = Histogram("memoir:edit_duration_seconds", "Time to train an applied edit (preparation and "
                          "optimisation; not the time it waited in the queue).", buckets=EDIT_SECONDS,
                          registry=REGISTRY)
EDIT_STEPS = Histogram("memoir:edit_steps", "Optimisation steps of an applied edit.", buckets=STEPS,
                       registry=REGISTRY)
ROLLBACKS = Counter("memoir:edit_rollbacks", "Rollbacks (DELETE /edits/{id}) by outcome: removed, rejected "
                    "(unknown id), failed.", ["outcome"], registry=REGISTRY)
ROUTING = Counter("memoir:routing_decisions", "Routing decisions, one per sequence: on (an edit's memory "
                  "answers) or off (the base model's output).", ["decision"], registry=REGISTRY)
BEST_OVERLAP = Histogram("memoir:routing_best_overlap", "Mask overlap of each sequence with its closest stored "
                         "edit (on when >= tau).", buckets=OVERLAP, registry=REGISTRY)

# -- the store ------------------------------------------------------------------------------------
SNAPSHOT_DURATION = Histogram("memoir:snapshot_duration_seconds", "Time to write a snapshot of the memory.",
                              buckets=SNAPSHOT, registry=REGISTRY)
SNAPSHOTS = Counter("memoir:snapshots", "Snapshots by outcome (ok, failed).", ["outcome"], registry=REGISTRY)
_last_snapshot = {"ok": 0.0}


def observe_snapshot(seconds: float, ok: bool) -> None:
    """A store's snapshot observer (MemoryStore.observe): one snapshot() call, ok or raised."""
    SNAPSHOTS.labels("ok" if ok else "failed").inc()
    if ok:
        SNAPSHOT_DURATION.observe(seconds)
        _last_snapshot["ok"] = time.time()


def observe_store(store: MemoryStore) -> MemoryStore:
    """Have the store report its snapshots here (its observer hook)."""
    store.observe(observe_snapshot)
    return store


# -- gauges read at scrape time from the running server -----------------------------------------
class ServerCollector:
    """Reads the server bound last (one per process in production; tests may create several)."""

    def __init__(self) -> None:
        self._runtime: Callable[[], Any] = lambda: None

    def bind(self, runtime: Any) -> None:
        self._runtime = weakref.ref(runtime)

    def describe(self):
        return []

    def collect(self):
        runtime = self._runtime()
        if runtime is None:
            return
        engine = getattr(runtime, "engine", None)
        ready = runtime.status == "ready" and engine is not None and engine.alive
        yield _gauge("memoir:ready", "1 when the model and the memory are loaded and the engine runs.", ready)
        yield InfoMetricFamily("memoir:model", "The served model and the memory's configuration.",
                               value=_model_info(runtime, engine))
        if engine is not None:
            running = len(getattr(engine.decoder, "running", ()))
            queued = getattr(engine, "_sequences", running)
            memoir = engine.memoir
            yield _gauge("memoir:num_requests_running", "Sequences in the running batch.", running)
            yield _gauge("memoir:num_requests_waiting", "Sequences waiting for a place in the batch.",
                         max(0, queued - running))
            yield _gauge("memoir:edit_queue_requests", "Edit and rollback requests queued or training.",
                         getattr(engine, "_edit_requests", 0))
            yield _gauge("memoir:edit_queue_edits", "Edits in those requests.", getattr(engine, "_edit_items", 0))
            yield _gauge("memoir:active_edits", "Live edits in the registry.", len(memoir.edits))
            yield _gauge("memoir:memory_version", "The memory version (one more per edit and per rollback).",
                         memoir.version)
            yield _gauge("memoir:writer_failed", "1 after a failed store write: edits are stopped until restart.",
                         bool(engine.writer.failed))
            yield _gauge("memoir:writer_paused", "1 while a passing fault (EMFILE, ENOSPC...) pauses edits; they "
                         "resume by themselves.", bool(runtime.store.transient))
            yield from _edit_bytes(memoir)
        follower = getattr(runtime, "follower", None)
        if follower is not None and engine is not None:
            head = max(follower.head, engine.memoir.version)
            yield _gauge("memoir:replication_log_head", "The newest version this replica knows the shared edit log "
                         "has.", head)
            yield _gauge("memoir:replication_lag_versions", "Log entries this replica has not applied yet.",
                         head - engine.memoir.version)
            yield _gauge("memoir:replication_caught_up", "1 while the replica follows the shared log (0: catching "
                         "up, or cut off from the database).", follower.status == "ok")
        yield _gauge("memoir:snapshot_last_success_timestamp_seconds", "Unix time of the last snapshot that "
                     "succeeded in this process (0: none yet).", _last_snapshot["ok"])
        yield from _store_stats(runtime.store)
        yield from _host_heap()


def _host_heap():
    counts = hostmem.heap()
    if counts is None:  # not glibc
        return
    yield _gauge("memoir:host_heap_in_use_bytes", "Bytes malloc has handed out from its arenas and not had back.",
                 counts["in_use"])
    yield _gauge("memoir:host_heap_free_bytes", "Free bytes malloc keeps in its arenas (allocator noise in RSS "
                 "where resident).", counts["free"])
    yield _gauge("memoir:host_heap_mmapped_bytes", "Bytes of blocks malloc mapped one by one (large tensors).",
                 counts["mmapped"])


_per_edit: dict[tuple, int] = {}  # capacity estimate per memory shape (tracemalloc: once)


def _edit_bytes(memoir: Any):
    held = sum(rec.held_bytes() for rec in list(memoir.edits.values()))
    yield _gauge("memoir:edit_tensor_bytes", "Bytes of the live edits' tensors held in RAM (masks; deltas too "
                 "with --store memory: a durable store reads them from disk).", held)
    key = (memoir.d_out, memoir.width, memoir.config.k, memoir.config.protect > 0, packed_masks(memoir.config))
    if key not in _per_edit:
        _per_edit[key] = estimate(*key[:3], guard=key[3], avoid=key[4]).ram_per_edit
    yield _gauge("memoir:edit_ram_bytes_per_edit", "RAM one stored edit costs with a durable store (masks, keys, "
                 "ids; `memoir model info` has the whole estimate).", _per_edit[key])


def _gauge(name: str, doc: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _model_info(runtime: Any, engine: Any) -> dict[str, str]:
    info = {"model_name": str(runtime.model_name)}
    if engine is not None:
        cfg = engine.memoir.config
        info.update(layer=str(cfg.layer), k=str(cfg.k), tau=str(cfg.tau))
    return info


def _store_stats(store: MemoryStore | None):
    """memoir:store_<name> for each number in `store.stats()`."""
    if store is None:
        return
    try:
        for name, value in sorted(store.stats().items()):
            if isinstance(value, (int, float)) and str(name).replace("_", "").isalnum():
                yield _gauge(f"memoir:store_{name}", f"The memory store's {name} (from its stats).", value)
    except Exception:
        log.exception("reading the store's stats failed")


SERVER = ServerCollector()
REGISTRY.register(SERVER)
