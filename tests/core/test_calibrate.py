import numpy as np

from memoir_core.calibrate import calibrate
from memoir_core.config import MemoirConfig


def _masks(rng, n, width, k):
    return np.stack([np.sort(rng.choice(width, size=k, replace=False)) for _ in range(n)])


def _perturb(rng, mask, width, keep):
    """A mask sharing `keep` of its indices with `mask` (a paraphrase)."""
    kept = rng.choice(mask, size=keep, replace=False)
    rest = rng.choice(np.setdiff1d(np.arange(width), kept), size=len(mask) - keep, replace=False)
    return np.sort(np.concatenate([kept, rest]))


def test_tau_separates_paraphrases_from_unrelated_and_grows_with_the_bank():
    rng = np.random.default_rng(0)
    width, k = 512, 64
    prompts = _masks(rng, 400, width, k)
    paraphrases = np.stack([_perturb(rng, m, width, int(k * 0.7)) for m in prompts])
    unrelated = _masks(rng, 600, width, k)
    cal = calibrate(prompts, paraphrases, unrelated, width, k, far=0.01, sizes=(25, 50, 100, 200, 400))
    # random masks overlap k/width = 0.125 on average; paraphrases keep 0.7
    assert 0.15 < cal.tau < 0.6
    assert cal.points[-1]["recall"] == 1.0
    assert cal.points[-1]["false_activation"] <= 0.02
    taus = [p["tau"] for p in cal.points]
    assert taus[-1] >= taus[0]  # more stored masks: higher chance maxima
    assert cal.tau_growth >= 0 and MemoirConfig(**cal.fields()).tau_at(10**6) >= cal.tau


def test_config_tau_follows_the_bank_size():
    cfg = MemoirConfig(tau=0.48, tau_growth=0.025, tau_ref_size=1000)
    assert cfg.tau_at(10) == cfg.tau_at(1000) == 0.48
    assert 0.48 < cfg.tau_at(10_000) < cfg.tau_at(1_000_000) < 0.53
