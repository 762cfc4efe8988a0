"""The mask bank's best match in torch, on whatever device holds the masks (a GPU).

MaskBank (maskbank.py) scans its packed masks on the CPU with numba. This is the same scan as
tensor operations: AND of each stored mask's 64-bit words with the query's, a SWAR popcount
in int64 (torch has no popcount), a sum per row. The answer is MaskBank.best's: the first slot
of largest overlap, and the rank-th largest count as the runner-up. It reads a copy of the
bank (DeviceMaskBank.of), so it compares the two paths at a bank's size; serving still routes
through MaskBank.
"""

from __future__ import annotations

import numpy as np
import torch

from .maskbank import MaskBank, Match, pack

_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F
# Rows per pass: the temporaries are a few times rows x words x 8 bytes (117 MB per tensor at
# 64k rows of an 8B model's 224 words), small beside a GPU's memory, and the passes are long
# enough to keep it busy.
CHUNK = 1 << 16


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 word. Arithmetic shifts are harmless here: every shifted value
    is masked before it counts, and from the third line on no word has its top bit set."""
    x = words - ((words >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F


class DeviceMaskBank:
    """Packed masks [N, W] as an int64 tensor on `device`, read-only."""

    def __init__(self, width: int, k: int, ids: list[str], bits: np.ndarray, device: torch.device | str):
        self.width, self.k, self.ids = width, k, list(ids)
        words = np.ascontiguousarray(bits, dtype=np.uint64).view(np.int64)
        self.bits = torch.from_numpy(words).to(device)

    @classmethod
    def of(cls, bank: MaskBank, device: torch.device | str) -> DeviceMaskBank:
        ids, bits = bank.export()
        return cls(bank.width, bank.k, ids, bits, device)

    def __len__(self) -> int:
        return len(self.ids)

    def _query(self, indices) -> torch.Tensor:
        packed = pack(np.asarray(indices), self.width)[0].view(np.int64)
        return torch.from_numpy(packed).to(self.bits.device)

    def counts_tensor(self, indices) -> torch.Tensor:
        """Overlap counts [N] (int64, on the device) of one query mask with every stored mask."""
        query = self._query(indices)
        parts = [popcount(self.bits[s : s + CHUNK] & query).sum(dim=1) for s in range(0, len(self), CHUNK)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=self.bits.device)

    def counts(self, indices) -> np.ndarray:
        return self.counts_tensor(indices).cpu().numpy().astype(np.uint64)

    def best(self, queries, rank: int = 1) -> list[Match]:
        """MaskBank.best on the device: for each query mask [B, k], the first stored mask of
        largest overlap, with the overlap of the rank-th best as its runner_up."""
        out = []
        m = max(1, rank)
        for q in np.atleast_2d(np.asarray(queries)):
            if not len(self):
                out.append(Match(None, 0.0))
                continue
            counts = self.counts_tensor(q)
            top = counts.topk(min(m, counts.numel())).values
            first = int((counts == top[0]).nonzero()[0])  # ties: the first slot, as the CPU scan
            top = top.tolist() + [0] * (m - top.numel())
            out.append(Match(self.ids[first], top[0] / self.k, top[-1] / self.k))
        return out
