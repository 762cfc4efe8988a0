"""The sequential evaluation protocol on a tiny model: metrics exist, are in range, and move."""

import itertools
import json
import statistics

import pytest

from memoir_core.datasets import Case, load_cases
from memoir_core.errors import InvalidRequestError
from memoir_core.evaluate import _greedy, make_eval_set, run_stream, score, spread, teacher_forced, token_accuracy
from memoir_core.generate import SamplingParams
from tests.support.tiny import make_memoir

CASES = [
    Case("who is the chief executive of the company", "jane roe", ["who is the chief of the company"],
         "the quick brown fox", "jumps", "company", "0"),
    Case("what is the capital city of the country", "lisbon", ["what is the capital of the country"],
         "numbers one two three", "four", "country", "1"),
    Case("paris london berlin rome", "madrid", ["paris london berlin"], "alice bob carol", "dave", "paris london", "2"),
]


def test_token_accuracy():
    assert token_accuracy([1, 2, 3], [1, 2, 4]) == 2 / 3
    assert token_accuracy([], []) == 0


def test_run_stream_reports_the_protocol_metrics():
    m = make_memoir("llama", max_steps=60, stop_loss=0.05)
    seen = []
    result = run_stream(m, CASES, checkpoints=2, greedy_checkpoints=True,
                        on_checkpoint=lambda curve: seen.append([p["edits"] for p in curve]))
    assert seen == [[2]]  # each checkpoint before the last is reported as it is scored
    metrics = result.metrics
    for key in ("reliability", "generalization", "locality", "greedy_reliability", "greedy_generalization",
                "routing_accuracy", "routing_accuracy_subject", "routing_accuracy_unique", "false_activation_rate",
                "edit_seconds_median",
                "edit_seconds_p90", "steps_median"):
        assert key in metrics, key
        assert metrics[key] == metrics[key]  # not NaN
    assert metrics["reliability"] >= 0.9  # every edit reached its loss target on its own prompt
    assert 1.0 <= metrics["target_perplexity_median"] <= metrics["target_perplexity"] * 3
    assert 0.0 <= metrics["locality"] <= 1.0 and metrics["edits"] == 3
    assert [c["edits"] for c in result.checkpoints] == [2, 3]
    assert len(result.edits) == 3 and all(e["steps"] >= 0 for e in result.edits)
    # edits that ended above the settle loss (5 x stop_loss), counted over the edits so far
    assert metrics["unlearnt"] == sum(e["loss"] > 0.25 for e in result.edits)
    assert result.checkpoints[0]["unlearnt"] == sum(e["loss"] > 0.25 for e in result.edits[:2])
    cut_short = run_stream(make_memoir("llama", max_steps=1), CASES[:2], checkpoints=1)
    assert cut_short.metrics["unlearnt"] == 2  # one step learns neither


def test_a_stream_edits_with_the_given_subjects_or_leaves_them_to_inference():
    given, inferred = make_memoir("llama", max_steps=2), make_memoir("llama", max_steps=2)
    run_stream(given, CASES[:2], checkpoints=1)
    run_stream(inferred, CASES[:2], checkpoints=1, infer_subjects=True)
    assert [r.subject_source for r in given.edits.values()] == ["given", "given"]
    # these lower-case prompts name nothing infer_subject finds: masks alone route them
    assert [(r.subject, r.subject_source) for r in inferred.edits.values()] == [(None, None), (None, None)]


def test_batched_scoring_matches_one_prompt_at_a_time():
    """Scoring sorts prompts by length into batches and reads the LM head at target positions only:
    every prompt must still get its own predictions, NLL and routing decision, in input order."""
    m = make_memoir("llama", max_steps=60, stop_loss=0.05)
    m.edit(CASES[0].prompt, CASES[0].target)
    enc = m.encoder
    texts = [CASES[0].prompt, "a", CASES[2].prompt + " and more words here", CASES[0].rephrases[0], "b c"]
    targets = [enc.target(t) for t in ("jane roe", "x", "madrid", "jane roe", "long answer of several words")]
    contexts = [enc.plain(t) for t in texts]
    together = teacher_forced(m, contexts, targets, batch_size=3)
    for i in range(len(texts)):
        alone = teacher_forced(m, [contexts[i]], [targets[i]])
        assert together.predictions[i] == alone.predictions[0]
        assert together.nll[i] == pytest.approx(alone.nll[0], abs=1e-4)
        assert together.decisions[i].route == alone.decisions[0].route
    assert together.decisions[0].route is not None and together.decisions[1].route is None
    assert together.predictions[0] == targets[0]  # the edit holds through the batched path


def test_greedy_decodes_each_prompt_past_its_own_target_only():
    m = make_memoir("llama", max_steps=60, stop_loss=0.05)
    m.edit(CASES[0].prompt, CASES[0].target)
    short = Case(CASES[0].prompt, CASES[0].target, [], None, None, "company", "a")
    wrong = Case(CASES[1].prompt, "a much longer answer than any other in the set", [], None, None, "country", "b")
    assert _greedy(m, [m.encoder.plain(short.prompt), m.encoder.plain(wrong.prompt)], [short, wrong]) == 0.5
    seqs = m.generate(["one", "two"], [SamplingParams(max_new_tokens=1), SamplingParams(max_new_tokens=3)])
    assert all(len(s.out_ids) == n or s.finish_reason == "stop" for s, n in zip(seqs, (1, 3)))
    assert len(seqs[0].out_ids) <= 1
    with pytest.raises(ValueError, match="2 sampling params for 1 prompts"):
        m.generate(["one"], [SamplingParams(), SamplingParams()])


def test_spread_keeps_the_first_and_newest_edits_and_every_index_once():
    assert spread(5, None) == [0, 1, 2, 3, 4] and spread(3, 10) == [0, 1, 2]
    picked = spread(2000, 500)
    assert len(picked) == 500 == len(set(picked)) and picked[0] == 0 and picked[-1] == 1999
    gaps = {b - a for a, b in itertools.pairwise(picked)}
    assert gaps <= {4, 5}  # evenly spaced: no stretch of the stream is skipped
    with pytest.raises(ValueError):
        spread(10, 1)


def test_a_sampled_checkpoint_scores_exactly_the_sampled_cases():
    m = make_memoir("llama", max_steps=60, stop_loss=0.05)
    ids = [m.edit(c.prompt, c.target, subject=c.subject).id for c in CASES]
    sampled = score(m, make_eval_set(m, CASES), edit_ids=ids, sample=2)  # cases 0 and 2
    direct = score(m, make_eval_set(m, [CASES[0], CASES[2]]), edit_ids=[ids[0], ids[2]])
    assert sampled["scored_cases"] == 2 and direct["scored_cases"] == 2
    for key in ("reliability", "generalization", "locality", "target_perplexity", "routing_accuracy",
                "false_activation_rate"):
        assert sampled[key] == pytest.approx(direct[key], abs=1e-6), key
    full = score(m, make_eval_set(m, CASES), edit_ids=ids)
    assert full["scored_cases"] == 3
    result = run_stream(make_memoir("llama", max_steps=60, stop_loss=0.05), CASES, checkpoints=3,
                        checkpoint_sample=2)
    assert [c["scored_cases"] for c in result.checkpoints] == [1, 2, 3]  # the final point scores every edit
    with pytest.raises(InvalidRequestError, match="checkpoint_sample"):
        run_stream(make_memoir("llama"), CASES, checkpoint_sample=1)
    with pytest.raises(InvalidRequestError, match="final_sample"):
        run_stream(make_memoir("llama"), CASES, final_sample=0)


def test_a_long_stream_may_score_a_sample_at_the_end_and_shows_edit_cost_at_each_point():
    result = run_stream(make_memoir("llama", max_steps=60, stop_loss=0.05), CASES, checkpoints=3,
                        final_sample=2)
    assert [c["scored_cases"] for c in result.checkpoints] == [1, 2, 2]
    assert result.metrics["scored_cases"] == 2 and "greedy_reliability" in result.metrics
    for point in result.checkpoints:  # the edits up to each point (all of them: fewer than RECENT)
        upto = result.edits[:point["edits"]]
        assert point["recent_edit_seconds_median"] == statistics.median(e["seconds"] for e in upto)
        assert point["recent_steps_median"] == statistics.median(e["steps"] for e in upto)
        assert point["recent_unlearnt"] == sum(e["loss"] > 0.25 for e in upto)
    # the base model's locality answers are read only for the cases some point scores
    m = make_memoir("llama")
    every, some = make_eval_set(m, CASES), make_eval_set(m, CASES, scored={0, 2})
    assert some.loc_base[1] is None and [some.loc_base[0], some.loc_base[2]] == [every.loc_base[0], every.loc_base[2]]


def test_a_stream_with_a_case_over_the_limits_stops_before_any_edit():
    m = make_memoir("llama", max_target_tokens=8)
    long = Case("where is the tower", "in the middle of the old city square", [], None, None, "tower", "9")
    with pytest.raises(InvalidRequestError, match=r"1 of 3 cases .*max_target_tokens.*case 2 \(9\): target_new is"):
        run_stream(m, [CASES[0], CASES[1], long], checkpoints=1)
    assert len(m.edits) == 0


def test_load_cases_maps_every_format_and_skips_broken_records(tmp_path):
    zsre = [{"src": "q?", "alt": "a", "rephrase": "q2?", "loc": "nq question: x", "loc_ans": "y", "subject": "s"},
            {"src": "broken", "alt": ""}]
    cf = [{"prompt": "p", "target_new": "t", "rephrase_prompt": "r", "locality_prompt": "l",
           "locality_ground_truth": ["g"], "subject": "s", "case_id": 7}]
    (tmp_path / "z.json").write_text(json.dumps(zsre))
    (tmp_path / "c.json").write_text(json.dumps(cf))
    z = load_cases(tmp_path / "z.json")
    c = load_cases(tmp_path / "c.json")
    assert len(z) == 1 and (z[0].prompt, z[0].target, z[0].rephrases, z[0].loc_answer) == ("q?", "a", ["q2?"], "y")
    assert (c[0].prompt, c[0].rephrases, c[0].loc_prompt, c[0].loc_answer, c[0].case_id) == ("p", ["r"], "l", "g", "7")


def test_plot_curve_writes_a_png_with_and_without_perplexity(tmp_path):
    from memoir_cli.plots import plot_curve

    curve = [{"edits": 10, "reliability": 0.99, "generalization": float("nan"), "locality": 1.0,
              "target_perplexity": 1.07},
             {"edits": 20, "reliability": 0.98, "generalization": float("nan"), "locality": 0.99,
              "target_perplexity": 1.12}]
    outlier = [*curve, {"edits": 30, "reliability": 0.9, "locality": 0.9, "target_perplexity": 3300.0,
                        "target_perplexity_median": 1.2}]  # log axis; a median on some points only
    for name, points in (("ppl.png", curve), ("plain.png", [{k: v for k, v in p.items() if k != "target_perplexity"}
                                                            for p in curve]), ("log.png", outlier),
                         ("cost.png", [{**p, "recent_edit_seconds_median": 0.3 * i, "recent_steps_median": 4,
                                        "recent_unlearnt": i} for i, p in enumerate(curve)])):
        plot_curve(points, str(tmp_path / name), title="t")
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height = lambda name: int.from_bytes((tmp_path / name).read_bytes()[20:24], "big")  # noqa: E731
    assert height("cost.png") > height("ppl.png") * 1.3  # the edit-cost panel below the scores
