"""How texts become tokens: one place decides special tokens, spacing and chat spans.

The tokenizer's own default for special tokens is used everywhere (SmolLM2 adds no BOS,
Llama-3 adds one): the same at edit time, at inference and for the background mean. A target
is tokenised on its own with a leading space, so the prompt's tokens never change with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    span: tuple[int, int]  # [start, end) of the tokens whose mean makes the mask


class PromptEncoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def has_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def eos_ids(self) -> set[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return ids

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def plain(self, text: str) -> Encoded:
        ids = self.tokenizer(text).input_ids
        return Encoded(ids, (0, len(ids)))

    def target(self, text: str, after_chat: bool = False) -> list[int]:
        if not after_chat and not text[:1].isspace():
            text = " " + text
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def chat(self, messages: list[dict[str, str]]) -> Encoded:
        """The chat-templated conversation ready for the assistant's turn; the span is the last user message."""
        tok = self.tokenizer
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc.input_ids, enc.offset_mapping
        span = (0, len(ids))
        users = [m for m in messages if m.get("role") == "user" and m.get("content")]
        if users:
            content = users[-1]["content"]
            start = rendered.rfind(content)
            if start >= 0:
                end = start + len(content)
                inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end]
                if inside:
                    span = (inside[0], inside[-1] + 1)
        return Encoded(ids, span)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
