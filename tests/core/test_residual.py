import pytest
import torch

from memoir_core.errors import EditFailedError
from memoir_core.residual import ResidualWeights, quantise


def test_rollback_and_replay_are_bit_exact_in_any_order():
    torch.manual_seed(0)
    edits = []
    for _ in range(20):
        idx = torch.randperm(64)[:16].sort().values
        edits.append((idx, quantise(torch.randn(8, 16) * 0.01)))
    live = ResidualWeights(8, 64)
    for idx, d in edits:
        live.add(idx, d)
    removed = edits.pop(7)
    live.subtract(*removed)
    replay = ResidualWeights(8, 64)
    for idx, d in reversed(edits):
        replay.add(idx, d)
    assert torch.equal(live.acc, replay.acc)
    assert torch.equal(live.weight, replay.weight)


def test_columns_without_matches_a_removal():
    w = ResidualWeights(4, 32)
    a_idx, b_idx = torch.arange(0, 16), torch.arange(8, 24)
    a, b = quantise(torch.randn(4, 16) * 0.1), quantise(torch.randn(4, 16) * 0.1)
    w.add(a_idx, a)
    w.add(b_idx, b)
    without = w.columns_without(b_idx, a_idx, a)
    w.subtract(a_idx, a)
    assert torch.equal(without, w.columns(b_idx))


def test_quantise_refuses_bad_updates():
    with pytest.raises(EditFailedError):
        quantise(torch.tensor([float("nan")]))
    with pytest.raises(EditFailedError):
        quantise(torch.tensor([1000.0]))
    q = quantise(torch.tensor([0.5, -0.25]))
    assert q.dtype == torch.int32 and q.tolist() == [2**23, -(2**22)]
