"""Where a base model comes from, checked before the (slow) load, so a model that cannot load
fails in a second with a cause an operator can act on, not after minutes of network retries
or with a library's traceback.

A Hugging Face id is read from the local cache (HF_HOME / HF_HUB_CACHE). One that is not there
is downloaded only where the hub can be reached: with HF_HUB_OFFLINE=1, or when a 3-second probe
of the hub fails, it is refused at once, with how to prepare it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from urllib.parse import urlparse

from .errors import ModelLoadError

PREPARE = ("prepare it on a machine with network: `huggingface-cli download {id}` (or python -c "
           "\"from huggingface_hub import snapshot_download; snapshot_download('{id}')\"), then copy the cache "
           "(~/.cache/huggingface) or give --model the folder it was saved to")


def looks_like_path(name: str) -> bool:
    """A folder, not a Hugging Face id ("name" or "org/name")."""
    return name.startswith(("/", "./", "../", "~", ".")) or name.count("/") > 1 or "\\" in name


def check(path: str) -> None:
    """Raise ModelLoadError, saying what is wrong, if `path` (a folder or a Hugging Face id,
    as models.resolve gives it) cannot be a causal LM to load."""
    folder = os.path.expanduser(path)
    if os.path.isdir(folder):
        _check_folder(path, folder)
    elif os.path.exists(folder):
        raise ModelLoadError(f"model {path!r} is a file, not a folder: give the folder that holds config.json")
    elif looks_like_path(path):
        raise ModelLoadError(f"model {path!r}: no such folder")
    else:
        _check_cached(path)


def _check_folder(path: str, folder: str) -> None:
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise ModelLoadError(f"model folder {path!r} has no config.json: not a Hugging Face model folder")
    try:
        with open(config) as f:
            body = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model folder {path!r}: config.json is unreadable: {e}") from None
    _check_causal(path, body)


def _check_causal(path: str, body: dict) -> None:
    archs = body.get("architectures") or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ModelLoadError(f"model {path!r} is not a causal LM (its architectures: {', '.join(archs)}); memoir "
                             "serves decoder-only text generation models (Llama, Mistral, Qwen2, Gemma, Phi-3, "
                             "GPT-2, GPT-NeoX, GPT-J)")
    if not archs and not body.get("model_type"):
        raise ModelLoadError(f"model {path!r}: config.json names no architecture or model_type")


def _check_cached(model_id: str) -> None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return
    found = try_to_load_from_cache(model_id, "config.json")
    if not isinstance(found, str):
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            why = "the hub is offline (HF_HUB_OFFLINE=1)"
        else:
            why = _unreachable()
        if why:
            raise ModelLoadError(f"model {model_id!r} is not a folder and not in the local Hugging Face cache, and "
                                 f"{why}: {PREPARE.format(id=model_id)}")
        return  # reachable: the load downloads it
    try:
        with open(found) as f:
            _check_causal(model_id, json.load(f))
    except (OSError, ValueError):
        pass  # the load says what is wrong with it


def _unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None. DNS has no timeout of its own: a thread has one."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[str | None] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"the hub cannot be reached ({host}:{port}: {e})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"the hub cannot be reached ({host}:{port}: no answer in {timeout:.0f} s)"
