"""`memoir model prepare|info`: the default model, converted once, and what a model looks like to memoir."""

from __future__ import annotations

import json
import os
import sys


def add_parsers(sub) -> None:
    p = sub.add_parser("model", help="prepare the default model, or show a model's memoir defaults")
    msub = p.add_subparsers(dest="model_command", required=True)
    prep = msub.add_parser("prepare", help="convert the embedded default model (GGUF) to safetensors once")
    prep.set_defaults(func=prepare)
    info = msub.add_parser("info", help="architecture, edited block, k and D of a model")
    info.add_argument("--model", default=None)
    info.add_argument("--shape", choices=sorted(SHAPES), default=None,
                      help="a known architecture built on the meta device (no weights) instead of --model")
    info.add_argument("--ram-budget", default="16GiB",
                      help="RAM for the capacity estimate (16GiB, 512MB...): how many edits it holds")
    info.set_defaults(func=show_info)


# Shapes to plan for without their weights (Hugging Face config fields)
SHAPES = {
    "llama-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, dtype="bfloat16"),
}


def _meta_model(shape: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SHAPES[shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def prepare(args) -> int:
    from memoir_core import models

    path = models.default_model_dir(progress=True)
    print(f"default model ready: {path}")
    return 0


def show_info(args) -> int:
    from memoir_core import arch, capacity, models
    from memoir_core.config import MemoirConfig

    try:
        budget = capacity.parse_bytes(args.ram_budget)
    except ValueError:
        print(f"memoir model info: --ram-budget {args.ram_budget!r} is not a size (16GiB, 512MB, 2e9)", file=sys.stderr)
        return 2
    try:
        model = _meta_model(args.shape) if args.shape else models.load(args.model)[0]
    except (OSError, ValueError) as error:
        print(f"memoir model info: cannot load {args.model}: {load_failure(args.model, error)}", file=sys.stderr)
        return 2
    spec = arch.spec_for(model)
    blocks = arch.get_path(model, spec.blocks)
    width, d_out = arch.projection_shape(arch.get_path(blocks[0], spec.down), spec.conv1d)
    cfg = MemoirConfig().resolved(len(blocks), width)
    cost = capacity.of_model(model)
    print(json.dumps({
        "model": args.shape or models.model_name(args.model), "model_type": model.config.model_type,
        "blocks": len(blocks), "projection": f"{spec.blocks}.{cfg.layer}.{spec.down}", "D": width, "d_out": d_out,
        "layer": cfg.layer, "k": cfg.k,
        "fingerprint": None if args.shape else models.fingerprint(model),
        "per_edit": {"ram_bytes": cost.ram_per_edit, "ram_bytes_store_memory": cost.ram_per_edit_in_memory_store,
                     "disk_bytes": cost.disk_per_edit, "delta_bytes": cost.delta_bytes},
        "fixed": {"model_bytes": cost.model_bytes, "memory_and_guard_bytes": cost.fixed_ram},
        "ram_budget": {"bytes": budget, "edits": cost.edits_within(budget)},
    }, indent=2))
    return 0


def load_failure(name: str | None, error: Exception) -> str:
    """One line for why a model did not load: a path that is not there says so, rather than the
    hub's complaint about repository ids."""
    path = os.path.expanduser(name or "")
    if path.startswith(("/", ".")) or os.path.exists(path):
        if not os.path.exists(path):
            return "no such folder"
        if not os.path.isdir(path):
            return "not a folder (a model is a folder with config.json and weights)"
        if not os.path.exists(os.path.join(path, "config.json")):
            return "no config.json in the folder: not a Hugging Face model"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
