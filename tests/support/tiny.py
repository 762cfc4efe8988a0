"""Tiny random models and their tokenizer: fast, for behaviour that does not depend on knowledge."""

from __future__ import annotations

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "who is the chief executive of the company",
    "what is the capital city of the country",
    "paris london berlin rome madrid lisbon",
    "jane roe john doe alice bob carol dave",
    "numbers one two three four five six seven eight nine ten",
] * 20


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(kind: str, vocab: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          pad_token_id=0, eos_token_id=2, bos_token_id=1)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=256,
                         pad_token_id=0, eos_token_id=2, bos_token_id=1)
    elif kind == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=256, pad_token_id=0,
                            eos_token_id=2)
    elif kind == "gptj":
        cfg = GPTJConfig(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=256, rotary_dim=8,
                         pad_token_id=0, eos_token_id=2, bos_token_id=1)
    else:
        raise ValueError(kind)
    # A wide init lets a random model become confident about a token (the default std of
    # 0.02 caps every logit near 1, so no edit could reach a low loss).
    cfg.initializer_range = 0.3
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval().requires_grad_(False)
    return model


def make_memoir(kind: str = "llama", pack_weights: bool = False, bf16_steps: bool = False, **config):
    from memoir_core.config import MemoirConfig
    from memoir_core.memoir import Memoir

    tok = tiny_tokenizer()
    model = tiny_model(kind, len(tok))
    cfg = MemoirConfig(**{"k": 32, "tau": 0.5, "max_steps": 30, "stop_loss": 0.05, "lr": 0.5, **config})
    return Memoir(model, tok, cfg, background=CORPUS[:12], pack_weights=pack_weights, bf16_steps=bf16_steps)
