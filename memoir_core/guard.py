"""KeyGuard: keeps a new edit's update off the inputs the stored edits read.

Edits share columns (two random masks of k = 2/7 D share 2/7 of them), so training edit j
moves the output of every stored edit i by (W_j' - W_j)[:, shared] x_i. Left alone this is
what makes reliability fall as the bank grows (ZsRE, 400 edits: 0.89, every prompt routed to
its own edit). The guard holds the second moment of the stored edits' memory inputs, each
edit's keys x (centred, on its own columns, every position of its own rows) averaged per edit
and summed over edits:

    C = sum_i mean_t x_it x_it^T          (D x D, x_it zero outside edit i's columns)

and a new edit on columns idx pays  protect * tr(Delta C[idx, idx] Delta^T)  for its update
Delta: the summed squared change it makes to the stored edits' memory outputs. AlphaEdit
projects updates into the null space of such keys; here the keys span all k columns after a
few hundred edits, so a penalty, which leaves the edit learnable, takes its place.

Each record keeps its keys as a factor F [r, k] with F^T F ~ mean_t x x^T (the top r
directions, fp16), so the guard is rebuilt from the records on restart (streaming: a durable
store reads each factor from disk once). C is summed exactly: each factor is rounded to a
fixed grid (2^-14, finer than fp16 itself for every entry above 1/16) as int64 and C holds
sum Fq^T Fq in int64, so an edit's share leaves it exactly as it came in, in any order: the
statistics after a rollback are those of a replay without the edit, bit for bit. The new edit
pays through C[idx, idx] alone, whatever the number of stored edits.

The guard also indexes which columns each stored edit trains (a MaskBank, 208 B per edit): which
edits share columns with one (Memoir.shared_columns, shown on rollback) and, with
config.neighbour_columns, which stored edits a new update lands on most, to co-train them. Under
the weighted routing pool those are not the edits whose routing masks are nearest.
"""

from __future__ import annotations

import numpy as np
import torch

from .maskbank import MaskBank

RANK = 32  # 0.96-0.99 of an edit's key energy on the default model (40-80 positions)
GRID = 2.0**14  # factor entries are summed as multiples of 2^-14 (C's entries of 2^-28)


def factor(keys: torch.Tensor, rank: int = RANK) -> torch.Tensor:
    """F [rank, k] fp16 with F^T F ~ keys^T keys / n, for keys [n, k] (zero rows pad a low rank)."""
    k = keys.double()
    _, s, vh = torch.linalg.svd(k, full_matrices=False)
    f = (s[:rank, None] * vh[:rank]) / max(1, k.shape[0]) ** 0.5
    out = torch.zeros(rank, k.shape[1], dtype=torch.float16)
    out[: f.shape[0]] = f.to(torch.float16)
    return out


class KeyGuard:
    def __init__(self, width: int, k: int, enabled: bool = True, device: torch.device | str = "cpu"):
        # D x D int64 (C x GRID^2), made at the first add: 19 MB on the default model, 1.6 GB at D = 14336
        self.width, self.enabled, self.device = width, enabled, device
        self._cov: torch.Tensor | None = None
        self.count = 0
        # kept whether or not the penalty is on: neighbour search uses it too
        self.columns = MaskBank(width, k)

    @property
    def cov(self) -> torch.Tensor:
        if self._cov is None:
            self._cov = torch.zeros(self.width, self.width, dtype=torch.int64, device=self.device)
        return self._cov

    def __len__(self) -> int:
        return self.count

    def copy(self) -> "KeyGuard":
        out = KeyGuard(self.width, self.columns.k, self.enabled, self.device)
        out._cov = None if self._cov is None else self._cov.clone()
        out.count = self.count
        out.columns = MaskBank.restore(self.width, self.columns.k, *self.columns.export())
        return out

    def sharing(self, idx: torch.Tensor, limit: int) -> list[tuple[str, int]]:
        """The `limit` stored edits that share the most columns with idx, and how many each shares."""
        if not len(self.columns) or limit <= 0:
            return []
        counts = self.columns.counts(idx.cpu().numpy()).astype(np.int64)
        ids = self.columns.ids
        # Ties go by edit id, not slot: slots move on removal, and a restored memory must pick
        # the same neighbours as the one that was saved.
        cut = np.partition(counts, -limit)[-limit] if len(counts) > limit else counts.min()
        tied = np.flatnonzero(counts >= cut)
        top = sorted(tied, key=lambda i: (-counts[i], ids[i]))[:limit]
        return [(ids[i], int(counts[i])) for i in top]

    def restricted(self, idx: torch.Tensor, without=None) -> torch.Tensor:
        """C[idx, idx] as fp32 [k, k], less the share of `without` (a record, or None)."""
        idx = idx.to(self.cov.device)
        out = self.cov.index_select(0, idx).index_select(1, idx)
        inputs = without.inputs if without is not None and without.has_inputs else None
        if inputs is not None:
            other = without.idx.to(self.cov.device)
            where = torch.searchsorted(idx, other).clamp_max(idx.numel() - 1)
            shared = idx[where] == other  # both sorted
            g = quantised(inputs).to(self.cov.device)[:, shared]
            pos = where[shared]
            out[pos.unsqueeze(1), pos.unsqueeze(0)] -= moment(g)
        return (out.double() / GRID**2).float()

    def add(self, rec, scratch: dict | None = None) -> None:
        """A record's columns, and its share of C (its idx and inputs) unless disabled or stored
        without inputs. scratch: buffers kept across calls (add_all)."""
        self.columns.add(rec.id, rec.idx.cpu().numpy())
        if self.enabled and rec.has_inputs:
            self._update(rec.idx, rec.inputs, +1, scratch)
            self.count += 1

    def add_all(self, records) -> None:
        """add() each record (a restart's rebuild) through one set of k x k buffers. The server
        pins glibc's mmap threshold (app/service/hostmem.py), so each fresh 1.5 MB temporary
        would be a new mapping, faulted in and unmapped: 10,000 edits took 11 s longer that way."""
        scratch: dict = {}
        for rec in records:
            self.add(rec, scratch)

    def remove(self, rec, inputs: torch.Tensor | None = None) -> None:
        """Its share out again; `inputs`: rec.inputs when the caller has read them already."""
        if self.enabled and rec.has_inputs:
            self._update(rec.idx, rec.inputs if inputs is None else inputs, -1)
            self.count -= 1
        if rec.id in self.columns:
            self.columns.remove(rec.id)

    def _update(self, idx: torch.Tensor, inputs: torch.Tensor, sign: int, scratch: dict | None = None) -> None:
        idx = idx.to(self.cov.device)
        m = moment(quantised(inputs).to(self.cov.device), scratch)
        # idx is distinct, so each entry of C is hit once: a flat index_add_ adds the k x k block
        # in one pass (index_put_ with accumulate sorts its indices first: 0.57 against 0.45 ms at
        # k = 440 on one core)
        flat = torch.add(idx.unsqueeze(1) * self.width, idx.unsqueeze(0), out=_buffer(scratch, "flat", m.shape,
                                                                                       torch.int64, m.device))
        self.cov.view(-1).index_add_(0, flat.view(-1), m.view(-1), alpha=sign)


def _buffer(scratch: dict | None, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor | None:
    """scratch[name] when it fits, made there when not; None (a fresh tensor) without scratch."""
    if scratch is None:
        return None
    held = scratch.get(name)
    if held is None or held.shape != tuple(shape):
        held = scratch[name] = torch.empty(tuple(shape), dtype=dtype, device=device)
    return held


def moment(f: torch.Tensor, scratch: dict | None = None) -> torch.Tensor:
    """f^T f of an int64 factor, exactly, as int64 (into scratch's buffers when given).

    Integer matmul has no BLAS kernel (0.57 ms for a [32, 440] factor on one core); float64 BLAS,
    conversions included, takes 0.23 ms, and is exact while every product and partial sum is an integer
    below 2^53, which r x max|f|^2 < 2^53 guarantees whatever order BLAS sums in. Past that
    (never on the default model: entries of a few units make max|f|^2 about 2^34), int64."""
    k = f.shape[1]
    if f.numel() == 0:
        return torch.zeros(k, k, dtype=torch.int64, device=f.device)
    peak = int(f.abs().max())
    out = _buffer(scratch, "moment", (k, k), torch.int64, f.device)
    if f.shape[0] * peak * peak < 2**53:
        d = f.double()
        product = torch.mm(d.T, d, out=_buffer(scratch, "product", (k, k), torch.float64, f.device))
        return product.long() if out is None else out.copy_(product)
    return torch.mm(f.T, f, out=out)


def quantised(inputs: torch.Tensor) -> torch.Tensor:
    """A factor on the guard's grid, int64: its moment and every sum of moments are exact.
    An edit whose entries stay under 2^a adds at most 32 x 2^(2a+28) to an entry of C, so with
    a = 8 (entries reach a few units on the default model) C holds 2^14 such edits on one column
    pair before int64 ends, and 2^20 with a = 5."""
    return torch.round(inputs.double() * GRID).long()
