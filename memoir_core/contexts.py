"""KV caches of the fixed contexts that training rows start with, computed once per model.

Every edit trains the same kinds of rows: the plain prompt, the prompt after each of the ten
prefixes, and the chat-templated prompt after the chat preamble (system prompt and the
template up to the user's message). The memory acts from the prompt on, never on what comes
before it, so these contexts' keys and values are the same for every edit at every block:
an edit computes only its own tokens (about 3x fewer), attending to the cached contexts.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .kvcache import CACHE_KW


class ContextCache:
    def __init__(self, model, contexts: list[list[int]]):
        """contexts[i] is a token list; an empty one means "no context"."""
        self.contexts = [list(c) for c in contexts]
        self._kv: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = []
        device = next(model.parameters()).device
        with torch.inference_mode():
            for ids in self.contexts:
                if not ids:
                    self._kv.append(None)
                    continue
                cache = DynamicCache(config=model.config)
                model.base_model(input_ids=torch.tensor([ids], device=device), **{CACHE_KW: cache}, use_cache=True)
                self._kv.append([(layer.keys.clone(), layer.values.clone()) for layer in cache.layers])

    def __len__(self) -> int:
        return len(self.contexts)

    def length(self, i: int) -> int:
        return len(self.contexts[i])

    def index(self, ids: list[int]) -> int | None:
        try:
            return self.contexts.index(list(ids))
        except ValueError:
            return None

    def batch(self, keys: list[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]] | None, torch.Tensor]:
        """Left-padded per-layer (K, V) for rows starting with contexts `keys`, and their [R, P] mask."""
        width = max(self.length(k) for k in keys)
        mask = torch.zeros((len(keys), width), dtype=torch.long)
        for r, k in enumerate(keys):
            if self.length(k):
                mask[r, width - self.length(k):] = 1
        if width == 0:
            return None, mask
        template = next(kv for kv in (self._kv[k] for k in keys) if kv is not None)
        layers = []
        for j, (k0, v0) in enumerate(template):
            keys_out = k0.new_zeros((len(keys), k0.shape[1], width, k0.shape[3]))
            values_out = v0.new_zeros((len(keys), v0.shape[1], width, v0.shape[3]))
            for r, k in enumerate(keys):
                n = self.length(k)
                if n:
                    kj, vj = self._kv[k][j]
                    keys_out[r, :, width - n:] = kj[0]
                    values_out[r, :, width - n:] = vj[0]
            layers.append((keys_out, values_out))
        return layers, mask
