"""vLLM's per-position logprobs as memoir's TokenLogprob (memoir_vllm/logprobs.py), without vLLM:
the positions are laid out as vLLM 0.32 reports them (token id -> Logprob(logprob, rank), the n
best plus the chosen token at its own rank)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from memoir_core.sampling import TokenLogprob
from memoir_vllm import logprobs


@dataclass
class Logprob:  # vllm.logprobs.Logprob's fields that memoir reads
    logprob: float
    rank: int | None


def at(*ranked: tuple[int, float], chosen: tuple[int, float, int] | None = None) -> dict[int, Logprob]:
    """A position: tokens given best first (ranks 1..n), and the chosen one at its rank beyond them."""
    out = {t: Logprob(v, r) for r, (t, v) in enumerate(ranked, 1)}
    if chosen is not None:
        out[chosen[0]] = Logprob(chosen[1], chosen[2])
    return out


def test_a_sampled_token_outside_the_best_keeps_its_value_and_stays_out_of_them():
    # vLLM's dicts put the chosen token first; memoir's top list is by rank
    pos = {9: Logprob(-5.0, 40), 3: Logprob(-0.1, 1), 7: Logprob(-2.5, 2)}
    assert logprobs.position(9, pos, 2) == TokenLogprob(9, -5.0, ((3, -0.1), (7, -2.5)))
    assert logprobs.position(9, pos, 0) == TokenLogprob(9, -5.0, ())


def test_a_sampled_token_among_the_best_is_listed_once():
    pos = at((3, -0.1), (7, -2.5))
    assert logprobs.position(7, pos, 2) == TokenLogprob(7, -2.5, ((3, -0.1), (7, -2.5)))
    assert logprobs.position(7, pos, 1).top == ((3, -0.1),)


def test_sample_pairs_tokens_with_positions_and_stops_at_the_shorter():
    got = logprobs.sample([3, 7, 2], [at((3, -0.2)), at((5, -0.3), chosen=(7, -1.5, 4))], 1)
    assert got == [TokenLogprob(3, -0.2, ((3, -0.2),)), TokenLogprob(7, -1.5, ((5, -0.3),))]


def test_prompt_logprobs_start_with_an_unscored_token_and_wait_for_the_whole_prompt():
    entries = [None, at((4, -0.7), chosen=(8, -3.0, 12)), at((1, -0.05))]
    assert logprobs.prompt([5, 8, 1], entries, 1) == [
        TokenLogprob(5, None), TokenLogprob(8, -3.0, ((4, -0.7),)), TokenLogprob(1, -0.05, ((1, -0.05),))]
    assert logprobs.prompt([5, 8, 1], entries[:2], 1) is None  # a chunked prefill not done yet
    assert logprobs.prompt([5], [None], 3) == [TokenLogprob(5, None)]


def test_a_position_without_its_own_token_is_an_error_not_a_wrong_number():
    with pytest.raises(ValueError, match="no logprob for token 6"):
        logprobs.position(6, at((3, -0.1)), 1)
