"""Logprobs as OpenAI's two formats have them, and prompts given as token ids.

`logprob_views` runs on the engine thread (it decodes token ids with the model's tokenizer);
the two formatters run on the event loop over its plain dicts.
"""

from __future__ import annotations

from memoir_core.errors import InvalidRequestError
from memoir_core.prompts import Encoded
from memoir_core.sampling import TokenLogprob


def token_prompt(ids: list[int], vocab: int) -> Encoded:
    """A prompt given as token ids: the whole of it is routed on."""
    bad = next((t for t in ids if t >= vocab), None)
    if bad is not None:
        raise InvalidRequestError(f"the prompt holds token id {bad}; the vocabulary has {vocab} tokens")
    return Encoded(list(ids), (0, len(ids)), None)


def _piece(tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def logprob_views(tokenizer, logprobs: list[TokenLogprob] | None) -> list[dict]:
    out: list[dict] = []
    for lp in logprobs or []:
        out.append({"token": _piece(tokenizer, lp.token), "logprob": lp.logprob,
                    "top": [(_piece(tokenizer, t), v) for t, v in lp.top]})
    return out


def _finite(value: float) -> float:
    return max(value, -9999.0)  # JSON has no -inf: a token the model cannot produce


def chat_logprobs(views: list[dict], n_top: int) -> dict:
    """choices[].logprobs of a chat completion (or of one streamed chunk)."""
    return {"content": [{"token": v["token"], "logprob": _finite(v["logprob"]), "bytes": list(v["token"].encode()),
                         "top_logprobs": [{"token": t, "logprob": _finite(lp), "bytes": list(t.encode())}
                                          for t, lp in v["top"][:n_top]]} for v in views],
            "refusal": None}


def completion_logprobs(views: list[dict], n_top: int, offset: int = 0) -> dict:
    """choices[].logprobs of a completion: parallel lists; a prompt's first token has no logprob."""
    tokens, values, tops, offsets = [], [], [], []
    for v in views:
        scored = v["logprob"] is not None
        tokens.append(v["token"])
        values.append(_finite(v["logprob"]) if scored else None)
        tops.append({t: _finite(lp) for t, lp in v["top"][:n_top]} if scored else None)
        offsets.append(offset)
        offset += len(v["token"])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
