"""MemoirConfig: every knob of the method in one dataclass, with defaults derived from the model's shape."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

# Seeds of the short prefixes the base model writes once; the prefixed training rows make an
# edit hold when the question comes after some other text.
PREFIX_SEEDS = ("I", "You", "Because", "Yes", "Q: ")
PREFIX_LENGTHS = (10,)  # the paper's (5, 10) doubles the rows for +0.01 reliability at T=100


@dataclass
class MemoirConfig:
    layer: int | None = None  # edited block; None: about 0.85 of the depth
    k: int | None = None  # active columns per mask; None: about 2/7 of D (paper: 4096 of 14336)
    # Routing threshold on the mask overlap. The defaults are `memoir calibrate --far 0.001` on
    # the default model with zsre_train_1k (disjoint from the dev edits): 0.1% of unrelated
    # prompts on at 1,000 edits, 95% of paraphrases routed. Calibrate again for another model.
    tau: float = 0.49
    # Unrelated prompts' best overlap grows with the bank (the max of N draws): above
    # tau_ref_size edits, tau rises by tau_growth * (sqrt(2 ln N) - sqrt(2 ln tau_ref_size)).
    # An extra routing key (an edit's chat form, a given paraphrase) counts this much less than
    # an edit's own mask. Chat-form keys sit close to many plain prompts: at 1,000 ZsRE edits
    # they let 1.8% of the unrelated prompts through at tau; 0.03 less lets 0.1% through, while
    # paraphrases routed to an edit about their subject go from 0.959 to 0.955 (chat: 0.951 to
    # 0.943). Measured from masks alone, so it holds whatever the edits learned.
    key_margin: float = 0.03
    # The best match must also beat the gap_rank-th best stored mask by min_gap (0: off). A
    # prompt in a template that many stored edits share ("Who is the CEO of Globex?" beside
    # edits about other companies' CEOs; CounterFact's neighbour prompts) overlaps them all
    # about alike; a question about an edited subject stands out. Masks alone, tau as at the
    # bank's size (benchmarks/README.md §5): CounterFact, 2,000 edits, neighbour prompts on
    # 57.8% -> 39.8%, paraphrases to their own edit 0.564 -> 0.555; ZsRE, 1,000 edits,
    # paraphrases to their own edit 0.827 either way, to their subject 0.970 -> 0.967 (0.992
    # -> 0.966 for subjects with 3 or more edits), unrelated prompts on 0.7% either way. The
    # rank leaves room for the several edits one subject may have: their masks sit near the top.
    min_gap: float = 0.06
    gap_rank: int = 8
    # A prompt of several sentences is also routed on its last one, and the better match wins:
    # context before a question dilutes its mask. Masks alone, CounterFact 600 edits (69 of the
    # 600 paraphrases put an unrelated sentence first): paraphrases to their own edit 0.585 ->
    # 0.638, neighbour prompts on 0.395 -> 0.400. ZsRE's questions are one sentence each
    # (benchmarks/README.md §5)
    tail_routing: bool = True
    tau_growth: float = 0.025
    tau_ref_size: int = 1000
    seed: int = 0  # permutation and prefix sampling

    # optimisation of one edit
    optimizer: str = "adam"  # "adam" or "sgd" (the paper's: lr 1.0, clip 1.0)
    lr: float = 0.06
    max_steps: int = 40
    stop_loss: float = 0.02
    # after settle_steps, a loss at or under settle_ratio * stop_loss ends the edit too: with
    # the key guard on, 14% of ZsRE edits hover at 0.02-0.06 (p(target) >= 0.94) to max_steps
    settle_steps: int = 10
    settle_ratio: float = 5.0
    grad_clip: float = 1.0
    weight_decay: float = 0.0  # the authors' 1e-5 slowly erases old edits
    max_edit_seconds: float = 60.0
    vocab_candidates: int = 256  # after step 1, softmax over the tokens in any position's top-N (0: all)
    # dtype of the model copy edits train on (precision.py); "auto": bf16 for an fp32 model on a
    # CPU with native bf16, else the model's own. W_m and the trained columns stay fp32.
    train_dtype: str = "auto"

    # training rows
    prefix_seeds: tuple[str, ...] = PREFIX_SEEDS
    prefix_lengths: tuple[int, ...] = PREFIX_LENGTHS
    # prefixed rows per edit: the first n of the basis's prefixes (None: all five). ZsRE dev
    # T=100 (bf16 training): 2 rows give rel/gen .990/.910, greedy .95/.77, as 5 rows did
    # (.983/.912, .94/.76) at 0.75x the cost; 1 row loses generalization (.887).
    prefix_rows: int | None = 2
    chat_rows: bool = True  # also train the chat-templated question, so /v1/chat answers change
    # weight of KL(base || edited) at the token after the target: after the new answer the
    # model goes on as the base model would (0: off, and one forward per edit saved)
    continuation_weight: float = 1.0
    # the memory reads a - mu (mu: the background mean): the shared part of all activations
    # then drives no update, so edits disturb each other less
    centre: bool = True
    # routing features: "mean" of the prompt's activations, or "norm": each token weighed by its
    # distance from the background mean, so names outweigh the question's template words. Only
    # the routing mask changes; an edit still trains the columns the plain mean picks (they hold
    # more of the last prompt token's energy, 0.55 vs 0.46, where the answer is read). Masks
    # alone over 1,000 ZsRE prompts, the unrelated rate held at 0.5%: paraphrases reaching their
    # subject 0.961 -> 0.970, their own edit where the subject is unique 0.953 -> 0.966;
    # CounterFact neighbour prompts (the same template, another subject) that reach an edit
    # 0.67 -> 0.44.
    pool: str = "norm"
    # weight of the key guard (guard.py): the squared change a new edit makes to the stored
    # edits' memory outputs, summed over them, joins its loss (0: off). ZsRE, 400 edits
    # (rel / gen): off 0.888 / 0.765, 1e-5 0.982 / 0.857, 3e-5 0.991 / 0.886.
    protect: float = 3e-5
    # an edit the guard holds back: once it has trained guard_yield_after steps and still sits
    # above the settle loss (settle_ratio * stop_loss), the guard's weight on it is multiplied by
    # guard_yield at every further step (0: never yields). The penalty sums over every stored
    # edit, so past about 1,000 CounterFact edits it outweighs a new edit's own loss and 11-43%
    # of new edits end unlearnt (off); a weaker guard for every edit overwrites the stored ones
    # (benchmarks/README.md §5). On by default: an edit the guard would block is learnt, and
    # every edit it does not block trains exactly as before.
    guard_yield_after: int = 10
    guard_yield: float = 0.8

    # co-training with neighbours: edits whose mask overlaps the new one's by at least this
    # much (None: tau) are kept intact and made robust to being routed to each other
    neighbour_overlap: float | None = None
    max_neighbours: int = 2
    # also look for neighbours among the edits sharing the most columns with the new one (only
    # where routing masks are not the columns: pool="norm"). Off: on ZsRE it lowered
    # generalization at T = 200 to 0.861 from 0.885 without it (same settings and machine;
    # benchmarks/README.md §5)
    neighbour_columns: bool = False
    neighbour_stop_loss: float = 0.1
    neighbour_extra_steps: int = 4

    # limits on input
    max_prompt_tokens: int = 256
    max_target_tokens: int = 48

    # background features
    n_background: int = 100

    def resolved(self, num_layers: int, width: int) -> "MemoirConfig":
        """A copy with layer and k filled in from the model's shape."""
        layer = self.layer if self.layer is not None else default_layer(num_layers)
        k = self.k if self.k is not None else default_k(width)
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer {layer} is outside 0..{num_layers - 1}")
        if not 0 < k <= width:
            raise ValueError(f"k {k} is outside 1..{width}")
        if self.pool not in ("mean", "norm"):
            raise ValueError(f"pool {self.pool!r} is not 'mean' or 'norm'")
        if self.guard_yield_after < 0 or not 0 < self.guard_yield <= 1:
            raise ValueError(f"guard_yield_after must be 0 or more and guard_yield in (0, 1], got "
                             f"{self.guard_yield_after} and {self.guard_yield}")
        return dataclasses.replace(self, layer=layer, k=k)

    def tau_at(self, n_edits: int) -> float:
        from .calibrate import growth_term

        extra = growth_term(n_edits) - growth_term(self.tau_ref_size)
        return self.tau + self.tau_growth * max(0.0, extra)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoirConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def default_layer(num_layers: int) -> int:
    return min(num_layers - 1, int(0.85 * num_layers))


def default_k(width: int) -> int:
    return max(8, int(round(width * 2 / 7 / 8)) * 8)


# Per-family presets: settings measured to work, applied before the shape-derived defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
}


def preset(name: str = "default", **overrides: Any) -> MemoirConfig:
    values = dict(PRESETS.get(name, {}))
    values.update(overrides)
    return MemoirConfig(**values)

