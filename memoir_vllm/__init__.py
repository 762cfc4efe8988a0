"""memoir inside vLLM: the residual memory on the edited block's MLP down projection, per request.

memoir routes each prompt itself (memoir_core, on its Hugging Face copy) before the request is
submitted; the decision travels with the request (tags.py), the routed edit's frozen columns
reach every worker through vLLM's collective RPC (worker.py), and a wrapper of the down
projection adds them on that request's tokens only (layer.py).

`register` is the `vllm.general_plugins` entry point: vLLM calls it in every process it starts.
It only checks that the installed vLLM is the one the plugin was tested with; the memory itself
comes in through the worker extension (worker.MemoirWorkerExtension), named per engine.
"""

from __future__ import annotations

import logging

TESTED_VLLM = ("0.32.0",)  # vLLM releases whose internals the plugin reads (batch.BatchView)
WORKER_EXTENSION = "memoir_vllm.worker.MemoirWorkerExtension"

log = logging.getLogger(__name__)


def register() -> None:
    """vLLM's general-plugin hook: warn, once per process, on an untested vLLM."""
    try:
        from vllm import __version__ as version
    except ImportError:  # pragma: no cover - the hook only runs inside vLLM
        return
    if version.split("+")[0] not in TESTED_VLLM:
        log.warning("memoir_vllm was tested with vLLM %s, this is %s: per-request memory reads vLLM's "
                    "batch layout (memoir_vllm/batch.py), check it before serving", ", ".join(TESTED_VLLM), version)
