"""An offline vLLM engine (vllm.LLM) set up the way the memory needs it, for tests and benchmarks.

The settings that matter to the memory are fixed here: the worker extension (the RPC methods),
an eager model (a compiled graph would not call the wrapper installed after it was traced)
and fp32 by default, so outputs can be compared with memoir's builtin engine. So are the two
that make vLLM serve memoir's request contract: raw logprobs (log-softmax of the raw logits, as
the builtin engine reports) and the guidance backend for structured outputs (llguidance, the
library memoir's own constraints use, so a schema compiles to the same grammar on both).
"""

from __future__ import annotations

import os

from . import WORKER_EXTENSION


def cpu_env(threads: int | None = None, kv_cache_gib: int = 1) -> None:
    """vLLM CPU's settings from the environment, for the engine processes it spawns: the KV cache
    size (its default takes a large share of RAM) and, with `threads`, the cores its OpenMP pool
    binds to (default: MEMOIR_THREADS, where set). Values already in the environment win."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    threads = threads or int(os.environ.get("MEMOIR_THREADS", "0") or 0)
    if threads:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if threads == 1 else f"0-{threads - 1}")


def engine(model: str, *, plugin: bool = True, dtype: str = "float32", max_model_len: int = 1024,
           max_num_seqs: int = 16, **kwargs):
    """vllm.LLM on `model` (a Hugging Face folder). plugin=False: plain vLLM with the same
    settings, to compare with."""
    from vllm import LLM

    if plugin:
        kwargs["worker_extension_cls"] = WORKER_EXTENSION
        kwargs["enforce_eager"] = True
        # the release after the answer reads each request's sampled tokens before the next step;
        # async scheduling (a GPU default) runs that step before they are known (CPU: always off)
        kwargs.setdefault("async_scheduling", False)
    kwargs.setdefault("logprobs_mode", "raw_logprobs")
    kwargs.setdefault("structured_outputs_config", {"backend": "guidance"})
    return LLM(model=model, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
               seed=0, **kwargs)


def close(llm) -> None:
    """Stop the engine's processes now rather than at interpreter exit (tests start several)."""
    llm.llm_engine.engine_core.shutdown()
