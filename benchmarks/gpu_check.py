"""The GPU check of issue 25: memoir on random-weight models of the shapes people deploy.

    PYTHONPATH=. python benchmarks/gpu_check.py                  # on a GPU: SmolLM2-135M and Llama-3-8B shapes
    PYTHONPATH=. python benchmarks/gpu_check.py --tiny           # anywhere, seconds: a 4-block model, small banks
    PYTHONPATH=. python benchmarks/gpu_check.py --shapes llama3-8b --server

Each model is built from its config with random weights (no download, nothing to carry) in
bf16 on the device, with the tests' small BPE tokenizer (400 tokens; the model's vocabulary
keeps its real size, so the LM head costs what it costs). For each shape:

1. correctness: memory off and memory all-zero give the unwrapped model's logits exactly; an
   edit changes only its k columns; rollback restores W_m bit for bit; a mixed batch routes
   each sequence as it routes alone; KV-cache decoding picks the tokens a full recomputation
   picks (within the dtype's rounding);
2. edit time over --edits random facts: median seconds, steps, preparation / first step /
   later steps, peak GPU memory during an edit;
3. serving: tokens/s and time to first token of the base model (memory layer removed), memory
   off and memory on, with --stored edits stored, at each --batches size, --tokens new tokens.
   The stored edits are SYNTHETIC: records applied without training (Memoir.apply), a random
   delta on random columns; the prompts served route to some of them (their masks are the
   prompts' own), so "memory on" is the memory on for every sequence, each on its own edit;
4. memory per stored edit: GPU and host bytes, with the deltas on the heap (today) and off it;
5. routing: best match over 100k and 1M random masks of the 8B shape's k, the numba CPU scan
   against the torch scan on the device (memoir_core/devicebank.py), same answers required.

--server also saves the first shape as a model folder and starts `memoir serve` on it (one
edit, one generation). Prints one table per part and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets the thread environment before torch loads)
import gpu_measure as gm  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(common.REPO))
from app.service.hostmem import pin_mmap_threshold  # noqa: E402
from memoir_core.config import MemoirConfig, default_k  # noqa: E402
from memoir_core.memoir import Memoir  # noqa: E402
from tests.support.tiny import CORPUS, tiny_tokenizer  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=None, initializer_range=0.3),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}
OTHER = ["Tell me a story about the sea.", "List three colours.", "How do trains work?", "Write a short poem."]


def build(shape: str, tok, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    spec = dict(SHAPES[shape])
    spec["vocab_size"] = spec["vocab_size"] or len(tok)
    cfg = LlamaConfig(**spec, max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it runs: an 8B model's CPU init would take minutes
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval().requires_grad_(False)


def check_shape(shape: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    tok = tiny_tokenizer()
    t0 = time.perf_counter()
    model = build(shape, tok, device, dtype, args.seed)
    out: dict = {"shape": shape, "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
                 "build_s": time.perf_counter() - t0}
    facts = gm.facts(args.edits, args.seed)
    probe = [p for p, _ in facts[:4]] + OTHER
    ids, mask = gm.batch_of(_Encoding(tok), probe)
    with torch.inference_mode():
        ref = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    t0 = time.perf_counter()
    m = Memoir(model, tok, MemoirConfig(), background=CORPUS[:12] if shape == "tiny" else None)
    out["memoir_setup_s"] = time.perf_counter() - t0
    out["width"], out["d_out"], out["k"], out["layer"] = m.width, m.d_out, m.config.k, m.config.layer
    checks = gm.exactness(m, ref, probe)
    out["edit"], records = gm.edit_times(m, args.edits, args.seed)
    checks.update(gm.correctness(m, [r.prompt for r in records[:4]], OTHER))
    out["correctness"] = {**checks, "all_pass": all(checks[k] for k in gm.PASS)}
    # prompts that route to the synthetic edits below by their masks: none may name a trained
    # edit's subject, or subject routing (and its other-question rule) decides them instead
    candidates = [p.replace("What is", "Tell me") for p, _ in gm.facts(max(args.batches) + args.edits, args.seed + 1)]
    serve_prompts = [p for p in candidates if not m.subjects.named_in(p)][: max(args.batches)]
    stored = gm.store_synthetic(m, max(0, args.stored - len(m.edits)), serve_prompts, args.seed)
    out["stored"] = {**stored, "total": len(m.edits), "synthetic": True}
    out["serving"] = gm.serving(m, serve_prompts, args.batches, args.tokens, args.reps)
    out["memory"] = gm.memory_per_edit(m, stored)
    if device.type == "cuda":
        out["vram_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    del m, model, ref
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


class _Encoding:
    """gm.batch_of's view of a tokenizer before there is a Memoir (its encoder and device)."""

    def __init__(self, tok):
        from memoir_core.prompts import PromptEncoder

        self.encoder, self.device = PromptEncoder(tok), torch.device("cpu")


def check_server(shape: str, device: torch.device, dtype: torch.dtype, seed: int, timeout: float) -> dict:
    """`memoir serve` on a model folder saved from the config: ready, one edit, one generation."""
    import httpx

    tok = tiny_tokenizer()
    with tempfile.TemporaryDirectory(prefix="memoir-gpu-") as folder:
        model = build(shape, tok, device, dtype, seed)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "MEMOIR_STORE": "memory", "PYTHONPATH": str(common.REPO)}
        cmd = [sys.executable, "-m", "memoir_cli.main", "serve", "--model", folder, "--port", str(port),
               "--device", device.type, "--dtype", str(dtype).removeprefix("torch.")]
        log = Path(folder) / "server.log"
        t0 = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=common.REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        url, result = f"http://127.0.0.1:{port}", {"ready": False}
        try:
            while time.perf_counter() - t0 < timeout and proc.poll() is None:
                try:
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        result = {"ready": True, "ready_s": time.perf_counter() - t0}
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            if result["ready"]:
                prompt = "What is the capital of Zorblax?"
                edit = httpx.post(url + "/edit", json={"prompt": prompt, "target_new": "Quillon"}, timeout=120)
                gen = httpx.post(url + "/generate", json={"prompt": prompt, "max_new_tokens": 4}, timeout=120)
                result.update(edit_status=edit.status_code, generate_status=gen.status_code,
                              memory_on=gen.status_code == 200 and gen.json().get("memory", {}).get("on"))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result["ok"] = bool(result.get("ready") and result.get("edit_status") == 200
                            and result.get("generate_status") == 200)
        if not result["ok"]:
            result["log_tail"] = log.read_text()[-3000:]
    return result


def tables(data: dict) -> str:
    parts = []
    for s in data["shapes"]:
        if "error" in s:
            parts.append(f"## {s['shape']}: FAILED\n\n{s['error']}")
            continue
        e, c, mem = s["edit"], s["correctness"], s["memory"]
        parts.append(f"## {s['shape']} ({s['params_b']:.2f}B parameters, D={s['width']}, k={s['k']}, "
                     f"block {s['layer']}; {data['device_name']}, {data['dtype']})")
        parts.append(common.table([{"check": k, "value": v} for k, v in c.items()]))
        parts.append(common.table([{"edits": e["edits"], "median s": e["median_s"], "p90 s": e["p90_s"],
                                    "steps": e["median_steps"], "prepare s": e["median_prepare_s"],
                                    "first step s": e["median_first_step_s"], "later step s": e["median_later_step_s"],
                                    "finish s": e["median_finish_s"], "commit s": e["median_commit_s"],
                                    "loss fell": f"{e['loss_fell']}/{e['edits']}", "peak VRAM MB": e["peak_vram_mb"]}]))
        parts.append(f"serving, {s['stored']['total']} stored edits ({s['stored']['total'] - e['edits']} synthetic: "
                     "applied without training):")
        parts.append(common.table(s["serving"]))
        parts.append(common.table([{k: v for k, v in mem.items()}]))
    parts.append("routing, best match rank 8 (numba CPU scan vs torch on the device):")
    parts.append(common.table(data["routing"]))
    if data.get("server"):
        parts.append(f"server: {json.dumps({k: v for k, v in data['server'].items() if k != 'log_tail'})}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a 4-block model and small banks: seconds on a CPU")
    p.add_argument("--shapes", default=None, help="comma-separated of " + ", ".join(SHAPES))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--edits", type=int, default=20)
    p.add_argument("--stored", type=int, default=1000)
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--routing-sizes", default="100000,1000000")
    p.add_argument("--server", action="store_true", help="also start `memoir serve` on a folder of the first shape")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.shapes = args.shapes or "tiny"
        args.edits, args.stored, args.tokens, args.reps = min(args.edits, 6), min(args.stored, 40), 8, 1
        args.batches, args.routing_sizes = "1,4", "1000,10000"
    args.shapes = args.shapes or "smollm2-135m,llama3-8b"
    args.batches = [int(b) for b in args.batches.split(",")]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    common.set_torch_threads()
    pin_mmap_threshold()  # as `memoir serve` does: host memory per stored edit is then what a server sees
    run = common.Run("gpu_check", vars(args))
    import transformers

    data = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__, "shapes": []}
    for shape in args.shapes.split(","):
        t0 = time.perf_counter()
        try:
            data["shapes"].append({**check_shape(shape, args, device, dtype), "seconds": time.perf_counter() - t0})
        except Exception:  # one run on a lent GPU must answer what it can: the next shape still runs
            data["shapes"].append({"shape": shape, "error": traceback.format_exc()[-4000:]})
            print(data["shapes"][-1]["error"], flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"{shape}: done in {time.perf_counter() - t0:.1f} s", flush=True)
        run.finish(args.out, **data, rows=[s["shape"] for s in data["shapes"]], partial=True)
    width = SHAPES["llama3-8b"]["intermediate_size"] if not args.tiny else 1536
    data["routing"] = gm.routing(width, default_k(width), [int(n) for n in args.routing_sizes.split(",")],
                                 device, args.seed)
    if args.server:
        data["server"] = check_server(args.shapes.split(",")[0], device, dtype, args.seed, timeout=300)
    print(tables(data))
    run.finish(args.out, **data, rows=[s["shape"] for s in data["shapes"]], partial=False)
    passed = all(s.get("correctness", {}).get("all_pass") for s in data["shapes"]) \
        and all(r["agree"] for r in data["routing"])
    return 0 if passed and data.get("server", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
