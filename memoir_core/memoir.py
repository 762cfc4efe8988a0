"""Memoir: a Hugging Face causal LM with a residual memory that takes edits.

The one object the rest of the project talks to. It wraps the edited block's projection,
holds the memory (a memorystate.Memory: W_m, the mask banks, the edit registry, the version,
which it reads through properties and changes only through its methods) and the fixed basis
every stored mask depends on (permutation, background mean, training prefixes), and offers
edit / remove / route / generate. Routing (routing.py) and training an edit (proposing.py) read
the memory and are mixins of it. It is not thread-safe: one thread owns it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from importlib import resources

import torch

from . import arch, maskbank, packed
from .basis import Basis
from .config import MemoirConfig
from .contexts import ContextCache
from .editor import Trainer
from .errors import EditNotFoundError, InvalidRequestError
from .generate import Decoder, GenSequence, SamplingParams
from .memory_layer import ResidualMemory
from .memorystate import Memory, MemoryField
from .precision import native_bf16, train_dtype, training_model
from .prompts import Encoded, PromptEncoder
from .proposing import EditProposal, Proposing
from .records import EditRecord
from .routing import Routing
from .rows import training_contexts
from .tophash import TopHash, random_permutation


def background_texts() -> list[str]:
    text = resources.files("memoir_core").joinpath("data/background.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class Memoir(Routing, Proposing):
    # The memory's state, read here and changed only through self.memory's methods.
    weights = MemoryField()  # ResidualWeights: W_m
    bank = MemoryField()  # MaskBank: each edit's routing mask
    keybank = MemoryField()  # MaskBank: extra routing keys
    edits = MemoryField()  # dict[str, EditRecord], in apply order
    version = MemoryField()  # int: one more per commit and per removal
    guard = MemoryField()  # KeyGuard
    subjects = MemoryField()  # SubjectIndex of the live edits

    def __init__(self, model, tokenizer, config: MemoirConfig | None = None, *, basis: Basis | None = None,
                 background: Iterable[str] | None = None, pack_weights: bool = False,
                 bf16_steps: bool = False):
        spec = arch.spec_for(model)
        blocks = arch.get_path(model, spec.blocks)
        probe = arch.get_path(blocks[0], spec.down)  # every block has the same widths
        base = probe.base_layer if isinstance(probe, ResidualMemory) else probe
        width, d_out = arch.projection_shape(base, spec.conv1d)
        self.config = (config or MemoirConfig()).resolved(len(blocks), width)
        down_path = f"{spec.blocks}.{self.config.layer}.{spec.down}"
        down = arch.get_path(model, down_path)
        if not isinstance(down, ResidualMemory):
            down = ResidualMemory(down)
            arch.set_path(model, down_path, down)
        self.model = model
        self.tokenizer = tokenizer
        self.layer: ResidualMemory = down
        self.blocks = blocks
        self.encoder = PromptEncoder(tokenizer)
        self.width, self.d_out = width, d_out
        self.device = down.base_layer.weight.device
        self.memory = Memory(width, d_out, self.config.k, self.device, guard=self.config.protect > 0)
        maskbank.warm_up()
        # The served model's products in oneDNN's layout (packed.py; a no-op off fp32 CPUs). Off
        # unless asked (the server asks): a library caller's model keeps the modules it gave.
        # bf16 steps only where the CPU computes bf16 natively (elsewhere oneDNN emulates it).
        low = bf16_steps and native_bf16(self.device)
        dtype = train_dtype(model, self.config.train_dtype, (width, d_out))
        # In the served dtype, edits train on the model's twin (precision.twin: the same weights),
        # so it is packed first, keeping dense weights only where an edit's steps run autograd.
        # A copy in another dtype is made before packing (a packed layer copies as a plain one).
        twinned = dtype == next(model.parameters()).dtype
        self.packed_layers = 0
        if pack_weights and twinned:
            keep = _trained_through(spec.blocks, self.config.layer)
            self.packed_layers = packed.pack(model, keep_dense=keep, bf16_steps=low)
        self.train_model = training_model(model, dtype)
        if pack_weights and not twinned:
            self.packed_layers = packed.pack(model, keep_dense=False, bf16_steps=low)
        self.train_dtype = str(dtype).removeprefix("torch.")
        train_blocks = arch.get_path(self.train_model, spec.blocks)
        self.trainer = Trainer(self.train_model, train_blocks, arch.get_path(self.train_model, down_path),
                               self.config.layer, self.config)
        self.basis: Basis | None = None  # while it is being made, routing features are plain means
        self.basis = basis or self._make_basis(list(background) if background is not None else background_texts())
        # Two hashes of the same prompt: the mask that routes (route_mean centres the
        # norm-weighted features) and the columns an edit trains, picked from the plain mean,
        # where the last prompt token has its energy: the answer is read there.
        self.tophash = TopHash(self.config.k, self.basis.permutation, self._route_centre())
        self.colhash = TopHash(self.config.k, self.basis.permutation, self.basis.background_mean)
        self.contexts = ContextCache(self.train_model, training_contexts(self.encoder, self.basis.prefixes, self.config.chat_rows))
        self.bf16_steps = low and self.packed_layers > 0

    # -- the basis --------------------------------------------------------------------------
    def _make_basis(self, texts: list[str]) -> Basis:
        permutation = random_permutation(self.width, self.config.seed)
        encoded = [self.encoder.plain(t) for t in texts]
        mean = self.features(encoded, centre=None).mean(dim=0)
        route_mean = self.features(encoded, centre=mean).mean(dim=0) if self.config.pool == "norm" else None
        prefixes = self._sample_prefixes()
        return Basis(permutation, mean, prefixes, route_mean)

    def _route_centre(self) -> torch.Tensor:
        if self.config.pool == "norm":
            if self.basis.route_mean is None:
                raise ValueError("pool='norm' needs a basis with route_mean (one made with pool='norm')")
            return self.basis.route_mean
        return self.basis.background_mean

    def _sample_prefixes(self) -> list[str]:
        """Short texts the base model writes once from fixed seeds; reused by every edit."""
        cfg = self.config
        seqs = [
            GenSequence(self.encoder.plain(seed).ids, (0, 0),
                     SamplingParams(max_new_tokens=n, temperature=1.0, top_p=0.9, seed=cfg.seed + i))
            for i, (seed, n) in enumerate((s, n) for n in cfg.prefix_lengths for s in cfg.prefix_seeds)
        ]
        self._run(seqs, memory=False)
        starts = [s for n in cfg.prefix_lengths for s in cfg.prefix_seeds]
        return [" ".join(f"{start} {seq.text}".split()) for start, seq in zip(starts, seqs)]

    # -- edits ------------------------------------------------------------------------------
    def bound(self, **limits) -> None:
        """Operator limits over this process's config (max_steps, max_edit_seconds, token limits):
        a new config, which the trainer shares; the stored memory keeps the config it was made with."""
        self.config = self.trainer.config = dataclasses.replace(self.config, **limits)

    def pause_points(self) -> list[torch.nn.Module]:
        """Modules at whose entry an edit's training may pause while the served model decodes
        (timeslice.Sliced): the training copy's (or twin's) blocks and head. None where edits train
        on the served model itself, whose block list a paused step would leave swapped (blockrun.py)."""
        if self.train_model is self.model:
            return []
        return [*self.trainer.blocks, self.trainer.head]

    def _offset(self, idx: torch.Tensor) -> torch.Tensor | None:
        if not self.config.centre:
            return None
        return self.basis.background_mean.to(idx.device)[idx]

    def commit(self, proposal: EditProposal) -> EditRecord:
        """Apply a trained edit: its delta joins W_m, its mask the bank; the version moves on."""
        return self.memory.commit(proposal.record)

    def apply(self, rec: EditRecord) -> None:
        """Add a stored edit (replay): no training, no version change."""
        self.memory.apply(rec)

    def edit(self, prompt: str, target: str, **kwargs) -> EditRecord:
        edit_id = kwargs.get("edit_id")
        if edit_id is not None:
            found = self.existing(edit_id, prompt, target)
            if found is not None:
                return found
        return self.commit(self.train(prompt, target, **kwargs))

    def train(self, prompt: str, target: str, **kwargs) -> EditProposal:
        """propose() run to its end in one call: the trained edit, nothing applied."""
        gen = self.propose(prompt, target, **kwargs)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value

    def remove(self, edit_id: str) -> EditRecord:
        """Roll one edit back: its delta leaves W_m exactly, its mask leaves the bank."""
        return self.memory.remove(edit_id)

    def shared_columns(self, edit_id: str) -> dict[str, int]:
        """Other edits that share columns with this one, and how many."""
        rec = self.edits.get(edit_id)
        if rec is None:
            raise EditNotFoundError(f"no edit with id {edit_id!r}")
        counts = self.guard.columns.counts(rec.idx.numpy())
        return {other: int(c) for other, c in zip(self.guard.columns.ids, counts) if other != edit_id and c > 0}

    # -- generation -------------------------------------------------------------------------
    def decoder(self, max_batch: int = 16, memory: bool = True) -> Decoder:
        return Decoder(self.model, self.layer, self.decide if memory else self._decide_off, self.encoder, max_batch,
                       centre=self.pool_centre, release_after_answer=self.config.release_after_answer)

    def encode(self, prompt: str | Encoded) -> Encoded:
        return prompt if isinstance(prompt, Encoded) else self.encoder.plain(prompt)

    def generate(self, prompts: list[str | Encoded], params: SamplingParams | list[SamplingParams] | None = None,
                 *, memory: bool = True, max_batch: int = 16) -> list[GenSequence]:
        """Run the prompts to the end, in batches of up to max_batch (params: one for all, or one each)."""
        params = params or SamplingParams()
        each = params if isinstance(params, list) else [params] * len(prompts)
        if len(each) != len(prompts):
            raise ValueError(f"{len(each)} sampling params for {len(prompts)} prompts")
        seqs = [GenSequence(e.ids, e.span, p, tail=e.tail) for e, p in zip(map(self.encode, prompts), each)]
        for s in seqs:
            if not s.prompt_ids:
                raise InvalidRequestError("prompt must not be empty")
        self._run(seqs, memory=memory, max_batch=max_batch)
        return seqs

    def _run(self, seqs: list[GenSequence], memory: bool = True, max_batch: int = 16) -> None:
        self.decoder(max_batch, memory).run(seqs)


def _trained_through(blocks: str, layer: int):
    """Which of the model's layers an edit's optimisation steps run with autograd: the blocks after
    the edited one and what follows them (the head). Blocks up to it run only in the preparation's
    forward, without autograd, so the served model packed for serving keeps no dense copy of them."""
    prefix = blocks + "."

    def trained(path: str) -> bool:
        if not path.startswith(prefix):
            return True
        return int(path[len(prefix):].split(".", 1)[0]) > layer

    return trained
