"""Tokenizer routes (/tokenize, /detokenize, as vLLM has them), /version and /v1/embeddings.

Embeddings are the served model's own last hidden states, mean-pooled over the input's tokens
and L2-normalised, with the memory off: a causal language model's states, not a model trained
for retrieval, so they rank texts by topic and wording rather than by meaning.
"""

from __future__ import annotations

import base64
from importlib.metadata import version as package_version
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from app.service.engine import Engine
from app.service.logprobs import token_prompt
from app.service.runtime import Runtime
from memoir_core.errors import InvalidRequestError

from .. import deps
from ..auth import client_access
from ..openai_common import check_model
from ..openai_protocol import MAX_TOKEN_ID, ChatMessage, TokenIds
from ..protocol import PromptText

router = APIRouter(tags=["tokens"])


class TokenizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, max_length=256)
    prompt: PromptText | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class TokenizeOut(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]


class DetokenizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, max_length=256)
    tokens: Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(max_length=200_000)]


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: (PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=64)] | TokenIds
            | Annotated[list[TokenIds], Field(min_length=1, max_length=64)])
    model: str | None = Field(None, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = Field(None, max_length=256)


def _encode(memoir, body: TokenizeIn) -> list[int]:
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return memoir.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                    add_generation_prompt=body.add_generation_prompt)["input_ids"]
    return memoir.tokenizer(body.prompt or "", add_special_tokens=body.add_special_tokens).input_ids


@router.post("/tokenize", response_model=TokenizeOut, summary="a prompt or chat as the model's token ids")
async def tokenize(body: TokenizeIn, runtime: Runtime = Depends(deps.runtime), engine: Engine = Depends(deps.engine),
                   _: None = Depends(client_access)):
    check_model(body.model, runtime)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("give either prompt or messages")
    ids = list(await engine.call(lambda m: _encode(m, body)))
    return TokenizeOut(count=len(ids), max_model_len=engine.context, tokens=ids)


@router.post("/detokenize", summary="token ids back to text")
async def detokenize(body: DetokenizeIn, runtime: Runtime = Depends(deps.runtime),
                     engine: Engine = Depends(deps.engine), _: None = Depends(client_access)) -> dict:
    check_model(body.model, runtime)

    def decode(memoir) -> str:
        token_prompt(body.tokens or [0], len(memoir.tokenizer))  # 400 for an id past the vocabulary
        return memoir.tokenizer.decode(body.tokens)

    return {"prompt": await engine.call(decode)}


@router.get("/version", summary="memoir's version")
async def version() -> dict:
    return {"version": package_version("memoir")}


def _embed(memoir, inputs: list[str | list[int]], limit: int) -> tuple[list[np.ndarray], int]:
    tok = memoir.tokenizer
    rows = [tok(x).input_ids if isinstance(x, str) else token_prompt(x, len(tok)).ids for x in inputs]
    longest = max(len(r) for r in rows)
    if longest > limit:
        raise InvalidRequestError(f"an input is {longest} tokens; the limit is {limit}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), memoir.encoder.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    with torch.inference_mode():
        out = memoir.model(input_ids=ids.to(memoir.device), attention_mask=mask.to(memoir.device),
                           output_hidden_states=True, logits_to_keep=1)
    states = out.hidden_states[-1].float()
    weights = mask.to(states.device).unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)
    return [v.cpu().numpy() for v in pooled], sum(len(r) for r in rows)


@router.post("/v1/embeddings", tags=["openai"], summary="mean-pooled, normalised last hidden states")
async def embeddings(body: EmbeddingsIn, runtime: Runtime = Depends(deps.runtime),
                     engine: Engine = Depends(deps.engine), _: None = Depends(client_access)) -> dict:
    check_model(body.model, runtime)
    inp = body.input
    inputs = [inp] if isinstance(inp, str) or isinstance(inp[0], int) else list(inp)
    vectors, n = await engine.call(lambda m: _embed(m, inputs, runtime.settings.max_prompt_tokens))
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype(np.float32).tobytes()).decode() if body.encoding_format == "base64"
             else v.tolist()} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": runtime.model_name,
            "usage": {"prompt_tokens": n, "total_tokens": n}}
