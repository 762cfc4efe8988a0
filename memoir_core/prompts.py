"""How texts become tokens: one place decides special tokens, spacing and chat spans.

The tokenizer's own default for special tokens is used everywhere (SmolLM2 adds no BOS,
Llama-3 adds one): the same at edit time, at inference and for the background mean. A target
is tokenised on its own with a leading space, so the prompt's tokens never change with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! or ? and whitespace, and the next begins with a capital, a digit or a
# quote. Not after an initial, a title or dotted letters ("Carlos W. Colby", "Mr. Smith Carries
# On", "S.L.A. Marshall"), and both sides keep at least MIN_SENTENCE_WORDS words, so a lone "Hi."
# is no sentence.
MIN_SENTENCE_WORDS = 3
_SENTENCE_END = re.compile(r"(\S*)[.!?]\s+(?=[\"'A-Z0-9])")
_NOT_AN_END = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "ft", "vs", "no", "inc", "ltd", "co", "corp",
               "gen", "col", "lt", "sgt", "capt", "rev", "hon", "gov", "sen", "rep", "etc", "approx"}


def _ends_sentence(match: re.Match) -> bool:
    word = match.group(1).lstrip("\"'(").lower()
    return match.group(0)[len(match.group(1))] != "." or (len(word) > 1 and "." not in word and word not in _NOT_AN_END)


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    span: tuple[int, int]  # [start, end) of the tokens whose mean makes the mask
    # [start, end) of the span's last sentence where the span holds several: a question after
    # some context ("I'm writing a report. Who runs Acme?") is routed on it too (config tail_routing)
    tail: tuple[int, int] | None = None


def last_sentence(text: str, offsets: list[tuple[int, int]], span: tuple[int, int],
                  start: int = 0) -> tuple[int, int] | None:
    """Token range of the last sentence of `text` (which begins at character `start` of the
    tokenised string and covers tokens `span`), or None when it is one sentence."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text.rstrip()) if _ends_sentence(m)
            and len(text[: m.end()].split()) >= MIN_SENTENCE_WORDS and len(text[m.end() :].split()) >= MIN_SENTENCE_WORDS]
    if not cuts:
        return None
    first = next((i for i in range(span[0], span[1]) if offsets[i][1] > start + cuts[-1]), None)
    return None if first is None or first == span[0] else (first, span[1])


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
        enc = self.tokenizer(text, return_offsets_mapping=True)
        ids, span = enc.input_ids, (0, len(enc.input_ids))
        return Encoded(ids, span, last_sentence(text, enc.offset_mapping, span))

    def target(self, text: str, after_chat: bool = False) -> list[int]:
        if not after_chat and not text[:1].isspace():
            text = " " + text
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def chat(self, messages: list[dict], tools: list[dict] | None = None, continue_final: bool = False,
             template_kwargs: dict | None = None) -> Encoded:
        """The chat-templated conversation ready for the assistant's turn (or, with continue_final,
        within its last message); the span is the last user message."""
        tok = self.tokenizer
        extra = dict(template_kwargs or {})
        if tools:
            extra["tools"] = tools
        if continue_final:
            extra["continue_final_message"] = True
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=not continue_final,
                                           **extra)
        enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc.input_ids, enc.offset_mapping
        span, tail = (0, len(ids)), None
        users = [m for m in messages if m.get("role") == "user" and m.get("content")]
        if users:
            content = users[-1]["content"]
            start = rendered.rfind(content)
            if start >= 0:
                end = start + len(content)
                inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end]
                if inside:
                    span = (inside[0], inside[-1] + 1)
                    tail = last_sentence(content, offsets, span, start)
        return Encoded(ids, span, tail)

    def span_text(self, ids: list[int], span: tuple[int, int]) -> str:
        """The text of a prompt's routed span (the user's last message in a chat)."""
        return self.decode(ids[span[0] : span[1]])

    def token_ends(self, ids: list[int]) -> tuple[str, list[int]]:
        """decode(ids), and where each token's characters end in it. Token by token where the
        pieces make up the text, else (a character split across tokens) prefix by prefix."""
        text = self.decode(ids)
        pieces = [self.decode([i]) for i in ids]
        if "".join(pieces) == text:
            ends, at = [], 0
            for piece in pieces:
                at += len(piece)
                ends.append(at)
            return text, ends
        return text, [len(self.decode(ids[: j + 1])) for j in range(len(ids))]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
