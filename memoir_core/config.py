"""MemoirConfig: every knob of the method in one dataclass, with defaults derived from the model's shape."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Seeds of the short prefixes the base model writes once; the prefixed training rows make an
# edit hold when the question comes after some other text.
PREFIX_SEEDS = ("I", "You", "Because", "Yes", "Q: ")
PREFIX_LENGTHS = (10,)  # the paper's (5, 10) doubles the rows for +0.01 reliability at T=100


@dataclass
class MemoirConfig:
    """Each field's measurements, and how its default was chosen: docs/tuning.md."""

    layer: int | None = None  # edited block; None: about 0.85 of the depth
    k: int | None = None  # active columns per mask; None: about 2/7 of D (paper: 4096 of 14336)
    tau: float = 0.49  # routing threshold on the mask overlap, at tau_ref_size edits (`memoir calibrate`)
    key_margin: float = 0.03  # an extra routing key (chat form, paraphrase) needs this much more overlap
    min_gap: float = 0.06  # the best match must beat the gap_rank-th best stored mask by this (0: off)
    gap_rank: int = 8
    tail_routing: bool = True  # a prompt of several sentences is also routed on its last one
    # an edit routes only for prompts that name its subject (given or inferred), at a mask
    # overlap of at least subject_tau; edits stored without one route on masks alone
    subject_routing: bool = True
    subject_tau: float = 0.3
    # ...and not for a prompt that matches one of the edit's other questions about its subject
    # (forms.OTHER_QUESTIONS) more than this above the edit's own masks (None: off)
    other_question_lead: float | None = 0.12
    # ...or, where the edit also keeps relation masks (relation.py), more than this on whole and
    # relation masks together (None: whole masks alone, and no relation masks made)
    relation_lead: float | None = 0.20
    release_after_answer: bool = True  # the memory lets go of a sequence once its output holds the target
    # at a routed prompt's last token, the memory reads the edit's own input there (its answer
    # key, records.py) instead of the prompt's: a reworded question gets the trained answer
    answer_key: bool = True
    tau_growth: float = 0.025  # tau rises by this * (sqrt(2 ln N) - sqrt(2 ln tau_ref_size)) past that size
    tau_ref_size: int = 1000
    seed: int = 0  # permutation and prefix sampling

    # optimisation of one edit
    optimizer: str = "adam"  # "adam" or "sgd" (the paper's: lr 1.0, clip 1.0)
    lr: float = 0.06
    max_steps: int = 40
    stop_loss: float = 0.02
    settle_steps: int = 10  # after this many steps, a loss under settle_ratio * stop_loss ends the edit too
    settle_ratio: float = 5.0
    grad_clip: float = 1.0
    weight_decay: float = 0.0  # the authors' 1e-5 slowly erases old edits
    max_edit_seconds: float = 60.0
    vocab_candidates: int = 256  # softmax over the tokens in any position's top-N at the first step (0: all)
    train_dtype: str = "auto"  # dtype edits train on (precision.py); auto: bf16 on a CPU with native bf16

    # training rows
    prefix_seeds: tuple[str, ...] = PREFIX_SEEDS
    prefix_lengths: tuple[int, ...] = PREFIX_LENGTHS
    prefix_rows: int | None = 2  # prefixed rows per edit: the first n of the basis's prefixes (None: all)
    statement_rows: bool = True  # also train the statement a question asks to complete (forms.py)
    alias_rows: bool = True  # also train the prompt with each given alias in the subject's place
    chat_rows: bool = True  # also train the chat-templated question, so /v1/chat answers change
    continuation_weight: float = 1.0  # KL(base || edited) after the target: the model goes on as before (0: off)
    centre: bool = True  # the memory reads a - mu (mu: the background mean), so edits disturb each other less
    pool: str = "norm"  # routing features: "mean" of the activations, or "norm": tokens weighed by distinctness
    protect: float = 3e-5  # weight of the key guard (guard.py) on the stored edits' outputs (0: off)
    guard_yield_after: int = 10  # the guard weakens by guard_yield a step on an edit stuck after this many (0: never)
    guard_yield: float = 0.8

    # co-training with neighbours
    neighbour_overlap: float | None = None  # edits overlapping a new one this much (None: tau) are kept intact
    max_neighbours: int = 2
    neighbour_columns: bool = False  # also look among the edits sharing the most columns (pool="norm"); off
    neighbour_stop_loss: float = 0.1
    neighbour_extra_steps: int = 4

    # limits on input
    max_prompt_tokens: int = 256
    max_target_tokens: int = 48

    def resolved(self, num_layers: int, width: int) -> MemoirConfig:
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
        extra = growth_term(n_edits) - growth_term(self.tau_ref_size)
        return self.tau + self.tau_growth * max(0.0, extra)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoirConfig:
        """Tolerant, for stored manifests: fields a memory was written with that no longer exist
        (n_background) are dropped. What an operator writes goes through checked() instead."""
        names = field_names()
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> MemoirConfig:
        return cls.from_dict(read_file(path))


# Keys a config file may carry that describe it rather than set a field: `memoir calibrate`
# writes its measurements beside tau, so the file it writes loads as is.
NOTES = ("calibration",)


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(MemoirConfig)}


def checked(values: Any, source: str) -> dict[str, Any]:
    """The config fields of a JSON object an operator wrote (a file, MEMOIR_CONFIG, --set): an
    unknown key is refused, naming the closest field, since a misspelt one would silently do nothing."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config is a JSON object of MemoirConfig fields, not {type(values).__name__}")
    names = field_names()
    unknown = sorted(set(values) - names - set(NOTES))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise ConfigError(f"{source}: unknown config fields: {', '.join(hints)}; the fields are MemoirConfig's "
                         "(memoir_core/config.py, docs/tuning.md)")
    return {k: v for k, v in values.items() if k not in NOTES}


def read_file(path: str | Path) -> dict[str, Any]:
    """A JSON config file's fields, checked."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path}: not JSON: {error}") from None
    return checked(values, f"config file {path}")


def growth_term(n: int) -> float:
    """The expected maximum of n draws grows like sqrt(2 ln n): unrelated prompts' best overlap."""
    return math.sqrt(2.0 * math.log(max(n, 2)))


def default_layer(num_layers: int) -> int:
    return min(num_layers - 1, int(0.85 * num_layers))


def default_k(width: int) -> int:
    return max(8, int(round(width * 2 / 7 / 8)) * 8)

