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
    info.set_defaults(func=show_info)


def prepare(args) -> int:
    from memoir_core import models

    path = models.default_model_dir(progress=True)
    print(f"default model ready: {path}")
    return 0


def show_info(args) -> int:
    from memoir_core import arch, models
    from memoir_core.config import MemoirConfig

    try:
        model, _ = models.load(args.model)
    except (OSError, ValueError) as error:
        print(f"memoir model info: cannot load {args.model}: {load_failure(args.model, error)}", file=sys.stderr)
        return 2
    spec = arch.spec_for(model)
    blocks = arch.get_path(model, spec.blocks)
    width, d_out = arch.projection_shape(arch.get_path(blocks[0], spec.down), spec.conv1d)
    cfg = MemoirConfig().resolved(len(blocks), width)
    print(json.dumps({
        "model": models.model_name(args.model), "model_type": model.config.model_type, "blocks": len(blocks),
        "projection": f"{spec.blocks}.{cfg.layer}.{spec.down}", "D": width, "d_out": d_out,
        "layer": cfg.layer, "k": cfg.k, "fingerprint": models.fingerprint(model),
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
