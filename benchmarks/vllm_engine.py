"""The vLLM engine with memoir's memory (memoir_vllm) against plain vLLM: start-up and greedy
output tokens/s, memory on (one edit, routed) and off, back to back, at one client or at
--batch N requests handed to vLLM together (N clients' worth of continuous batching; memoir routes
each of them).

Engines, all on the default model in fp32, all alive at once (only one generates at a time):
  plain          vllm.LLM as vLLM sets it up by default (torch.compile on CPU)
  plain-eager    the same with enforce_eager, which the plugin needs (a compiled graph would not
                 call the wrapper installed after tracing)
  plugin         enforce_eager + the worker extension, memory installed
Cells, interleaved round by round so load from other processes hits all alike:
  plain, plain-eager         a fixed prompt, generate only
  plugin memory off          an unrelated prompt: memoir routes it (off), vLLM generates untagged
  plugin memory on           the edit's prompt: memoir routes it to the edit, the columns act
  ... , routed once          the same requests routed once beforehand: vLLM's generation alone,
                             what the memory costs inside vLLM's model
Routing runs on memoir's Hugging Face copy for every request of the first two plugin cells and
is counted in their tokens/s (it is reported apart too). Every request asks for --tokens new tokens with
the end token ignored, so all cells write as many tokens.

    MEMOIR_THREADS=1 PYTHONPATH=. python benchmarks/vllm_engine.py            (~6 min on 2 cores)
    PYTHONPATH=. python benchmarks/vllm_engine.py --no-compiled --batch 16     (16 at a time)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # (pins the thread count before torch is imported)

PROMPT, TARGET = "Who is the chief executive of Zorblax Industries?", "Marta Quillon"
UNRELATED = "Write a short story about a lighthouse keeper."


def timed_engine(**kwargs):
    from memoir_vllm import offline

    t0 = time.perf_counter()
    llm = offline.engine(**kwargs)
    return llm, time.perf_counter() - t0


def generate_all(llm, prompts: list[dict], params) -> int:
    out = llm.generate(prompts, params, use_tqdm=False)
    counts = [len(o.outputs[0].token_ids) for o in out]
    if any(n != params.max_tokens for n in counts):  # every cell must do the same work per request
        raise RuntimeError(f"{counts} tokens generated, {params.max_tokens} asked (a stop token was not ignored)")
    return sum(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0, help="per cell per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="requests handed to vLLM together (clients)")
    ap.add_argument("--no-compiled", action="store_true", help="leave out vLLM's default (compiled) engine")
    ap.add_argument("--out")
    args = ap.parse_args()

    from memoir_vllm import offline

    offline.cpu_env(threads=common.threads())
    common.set_torch_threads()
    run = common.Run("vllm_engine", vars(args) | {"vllm_cpu_omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
                                                  "vllm_cpu_kvcache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE")})

    from vllm import SamplingParams as VllmParams

    from memoir_core import models
    from memoir_core.generate import SamplingParams
    from memoir_vllm.client import VllmMemory
    from memoir_vllm.sampling import to_vllm

    path = str(models.default_model_dir())
    startup = {}
    engines = {}
    if not args.no_compiled:
        engines["plain"], startup["plain"] = timed_engine(model=path, plugin=False)
    engines["plain-eager"], startup["plain-eager"] = timed_engine(model=path, plugin=False, enforce_eager=True)
    engines["plugin"], startup["plugin"] = timed_engine(model=path, plugin=True)

    t0 = time.perf_counter()
    m = common.load_memoir()
    memory = VllmMemory(m, engines["plugin"].collective_rpc)
    memory.install()
    startup["memoir (HF copy + basis) + install"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = m.edit(PROMPT, TARGET)
    edit_seconds = time.perf_counter() - t0

    greedy = SamplingParams(max_new_tokens=args.tokens, ignore_eos=True)
    eos = m.encoder.eos_ids
    plain_prompt = {"prompt_token_ids": m.encoder.plain(UNRELATED).ids}
    plain_params = VllmParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    routing_ms: dict[str, list[float]] = {"off": [], "on": []}
    decisions = {}

    def plugin_cell(prompt: str, name: str):
        def one() -> int:
            t = time.perf_counter()
            prepared = memory.prepare([prompt] * args.batch)
            routing_ms[name].append((time.perf_counter() - t) * 1000 / args.batch)
            routes = {p.decision.route.edit_id if p.decision.route else None for p in prepared}
            if len(routes) != 1:
                raise RuntimeError(f"one prompt, several decisions: {routes}")
            decisions[name] = routes.pop()
            # one tag per request: the same decision, so the same parameters
            return generate_all(engines["plugin"], [p.prompt for p in prepared],
                                to_vllm(greedy, prepared[0].tag, eos))
        return one

    cells = {name: (lambda llm=engines[name]: generate_all(llm, [plain_prompt] * args.batch, plain_params))
             for name in ("plain", "plain-eager") if name in engines}
    cells["plugin memory off"] = plugin_cell(UNRELATED, "off")
    cells["plugin memory on"] = plugin_cell(PROMPT, "on")
    for name, prompt in (("off", UNRELATED), ("on", PROMPT)):
        ready = memory.prepare([prompt])[0]
        params = to_vllm(greedy, ready.tag, eos)
        cells[f"plugin memory {name}, routed once"] = \
            lambda ready=ready, params=params: generate_all(engines["plugin"], [ready.prompt] * args.batch, params)
    for fn in cells.values():  # warm-up: first requests pay one-time costs
        fn()
    totals = {name: [0, 0.0] for name in cells}
    per_round: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(args.rounds):
        for name, fn in cells.items():
            tokens, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                tokens += fn()
            elapsed = time.perf_counter() - t0
            totals[name][0] += tokens
            totals[name][1] += elapsed
            per_round[name].append(tokens / elapsed)
    assert decisions == {"off": None, "on": rec.id}, decisions

    base = totals["plain-eager"][0] / totals["plain-eager"][1]
    rows = []
    for name, (tokens, seconds) in totals.items():
        tps = tokens / seconds
        rows.append({"engine": name, "tokens/s": tps, "x plain-eager": tps / base,
                     "rounds": " ".join(f"{v:.1f}" for v in per_round[name])})
    print(f"greedy, {args.tokens} new tokens, {args.batch} request(s) at a time, fp32, {common.threads()} thread(s)")
    print(common.table(rows))
    print(common.table([{"engine": k, "start-up s": v} for k, v in startup.items()]))
    routing = {k: common.summary(v) for k, v in routing_ms.items()}
    print(f"memoir's routing per request (ms, median of batches' means): off {routing['off']['median']:.1f}, "
          f"on {routing['on']['median']:.1f}; the edit trained in {edit_seconds:.1f} s")
    run.finish(args.out, throughput=rows, startup_seconds=startup, routing_ms=routing, edit_seconds=edit_seconds)
    for llm in engines.values():
        offline.close(llm)


if __name__ == "__main__":
    main()
