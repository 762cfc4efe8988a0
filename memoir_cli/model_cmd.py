"""`memoir model prepare|info`: the default model, converted once, and what a model looks like to memoir."""

from __future__ import annotations

import json


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

    model, _ = models.load(args.model)
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
