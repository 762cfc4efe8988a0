"""Smoke test of the speed benchmarks: each entry point runs at tiny sizes (the tests' random
model, small banks, short windows) and writes its JSON, so the scripts don't rot. The figures
of such a run mean nothing; benchmarks/README.md has the real ones."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from memoir_core.precision import native_bf16

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
ZSRE = Path("/work/shared/data/zsre/zsre_edit_dev_500.json")
needs_data = pytest.mark.skipif(not ZSRE.exists(), reason=f"{ZSRE} is not here")


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert script(name).main([*args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"] and data["machine"]["cpus"] and "load_end" in data
    return data


def test_routing(tmp_path):
    data = run("routing", tmp_path, "--quick")
    assert [r["masks"] for r in data["rows"]] == [1000, 10000]
    assert all(r["agree"] == 1.0 and r["bits_B_per_mask"] == 192 for r in data["rows"])
    assert all(r["total_B_per_mask"] <= 256 for r in data["rows"])  # the bound, bookkeeping included


@needs_data
def test_routing_study(tmp_path):
    data = run("routing_study", tmp_path, "--model", "tiny", "--limit", "4", "--extend", "", "--margins", "0,inf",
               "--data", str(ZSRE))
    rows = {(r["prompts"], r["key_margin"]): r for r in data["rows"]}
    assert data["edits"] == 4 and data["config"]["max_steps"] == 1
    assert {kind for kind, _ in rows} >= {"plain", "paraphrase", "unrelated"}
    assert rows[("plain", 0.0)]["own"] == 1.0  # an edit's own prompt matches its own mask exactly
    assert "own" not in rows[("unrelated", "no keys")]


@needs_data
def test_routing_gap(tmp_path):
    data = run("routing_gap", tmp_path, "--model", "tiny", "--limit", "12", "--extend", "", "--ranks", "2,20",
               "--gaps", "0.05", "--rerank", "0,0.5", "--data", str(ZSRE))
    rows = {(r["gap_rank"], r["min_gap"]): r for r in data["rows"]}
    reranked = [rows.pop(("8, re-rank within 0.0", 0.06)), rows.pop(("8, re-rank within 0.5", 0.06))]
    tail = rows.pop(("8, + last sentence", 0.06))  # a tail only adds a way in
    assert tail["unrelated_on"] >= reranked[0]["unrelated_on"] and set(data["several_sentences"]) == {
        "paraphrase", "unrelated"}
    assert data["edits"] == 12 and set(rows) == {("off", 0.0), (2, 0.05), (20, 0.05)}
    assert reranked[0]["unrelated_on"] == reranked[1]["unrelated_on"]  # re-ranking never turns the memory on
    assert data["twin_paraphrases"] >= 0
    off = rows[("off", 0.0)]
    assert rows[(20, 0.05)] == {**off, "gap_rank": 20, "min_gap": 0.05}  # a rank past the bank's size: the rule never bites
    for r in rows.values():  # a rule only turns the memory off, never on
        assert r["unrelated_on"] <= off["unrelated_on"] and r["para_subject"] <= off["para_subject"]
        assert r["para_own"] <= r["para_answer"]  # its own edit has its own answer


@needs_data
def test_edit_speed(tmp_path):
    data = run("edit_speed", tmp_path, "--model", "tiny", "--edits", "2", "--ref-edits", "1", "--ref-steps", "2",
               "--data", str(ZSRE))
    memoir, reference = data["rows"]
    assert memoir["edits"] == 2 and reference["edits"] == 1 and reference["steps_median"] == 2
    assert data["speedup"] > 0


@needs_data
def test_inference(tmp_path):
    data = run("inference", tmp_path, "--model", "tiny", "--sizes", "0,50", "--tokens", "3", "--reps", "1",
               "--data", str(ZSRE))
    assert len(data["rows"]) == 4
    assert all(r["on_share"] == 1.0 and r["off_share_on"] == 0.0 for r in data["rows"])


@pytest.mark.slow  # a benchmark end to end, 16 s: make test-slow (CI)
@needs_data
def test_serving(tmp_path):
    data = run("serving", tmp_path, "--model", "tiny", "--clients", "1", "--seconds", "1", "--reps", "1",
               "--tokens", "3", "--data", str(ZSRE))
    assert len(data["rows"]) == 2
    assert all(r["requests"] > 0 and r["error_rate"] == 0 for r in data["rows"])


@pytest.mark.slow  # a benchmark end to end, 23 s: make test-slow (CI)
@needs_data
def test_engines(tmp_path):
    data = run("engines", tmp_path, "--model", "tiny", "--clients", "1,2", "--seconds", "1", "--tokens", "3",
               "--data", str(ZSRE))
    assert [r["engine"] for r in data["rows"]] == ["memoir plain", "memoir packed"]
    assert all(r["tok_s_1"] > 0 and r["tok_s_2"] > 0 and "x_llama_1" not in r for r in data["rows"])
    assert data["cells"]["memoir packed|2"][0]["tokens"] >= 6  # both clients were answered


@needs_data
@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_bf16_steps(tmp_path):
    data = run("bf16_steps", tmp_path, "--model", "tiny", "--quick", "--tokens", "3", "--data", str(ZSRE))
    assert [r["kind"] for r in data["rows"]] == ["question", "paraphrase", "locality"]
    assert all(r["same_decision"] == 1.0 for r in data["rows"])  # prompts run at fp32 either way
    assert [r["batch"] for r in data["speed"]] == [1, 4] and all(r["bf16_ms"] > 0 for r in data["speed"])


@needs_data
def test_edit_steps(tmp_path):
    data = run("edit_steps", tmp_path, "--model", "tiny", "--edits", "1", "--data", str(ZSRE))
    assert data["rows"][0]["part"].startswith("preparation") and len(data["edits"]) == 1


def test_compare_runs_pairs_only_checkpoints_scored_on_the_same_cases(tmp_path, capsys):
    def report(name, points):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"checkpoints": [
            {"edits": n, "scored_cases": cases, "reliability": rel, "generalization": 0.5, "locality": 0.9, **extra}
            for n, cases, rel, extra in points]}))
        return str(path)

    a = report("a", [(100, 100, 0.99, {}), (200, 150, 0.98, {}), (300, 300, 0.97, {})])
    b = report("b", [(100, 100, 0.95, {"unlearnt": 0}), (200, 150, 0.96, {"unlearnt": 3}),
                     (300, 150, 0.94, {"unlearnt": 7})])  # 300: b is a sample, a the final point
    compare = script("compare_runs")
    png = tmp_path / "c.png"
    assert compare.main([f"default={a}", f"yield={b}", "--plot", str(png)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == ("| edits | default rel | default gen | default loc | yield rel | yield gen | yield loc "
                       "| yield unlearnt |")
    assert rows[2:] == ["| 100 | 0.990 | 0.500 | 0.900 | 0.950 | 0.500 | 0.900 | 0 |",
                        "| 200 | 0.980 | 0.500 | 0.900 | 0.960 | 0.500 | 0.900 | 3 |"]
    assert png.stat().st_size > 10_000
    with pytest.raises(SystemExit):
        compare.main([a, a])  # one label twice
    c = report("c", [(150, 150, 0.9, {})])
    assert compare.main([a, c]) == 1  # nothing shared


def test_constrained(tmp_path):
    data = run("constrained", tmp_path, "--model", "tiny", "--batches", "2", "--tokens", "3", "--reps", "1")
    (row,) = data["rows"]
    assert row["tokens"] == {"free": 24, "json": 24} and row["json_tok_s"] > 0


@pytest.mark.slow  # the GPU script on CPU, 11 s: make test-slow (CI)
def test_gpu_check_tiny(tmp_path):
    """benchmarks/gpu_check.py (issue 25's GPU run) at a tiny size on the CPU, in bf16 as on a GPU,
    its server step included: every part runs and every correctness check passes."""
    data = run("gpu_check", tmp_path, "--tiny", "--server")
    (shape,) = data["shapes"]
    assert shape["correctness"]["all_pass"] and shape["correctness"]["mixed_batch_on"] >= 4
    assert shape["edit"]["edits"] == 6 and shape["edit"]["median_steps"] >= 1 and shape["edit"]["loss_fell"] >= 1
    assert shape["stored"] == {**shape["stored"], "total": 40, "synthetic": True}
    assert [r["batch"] for r in shape["serving"]] == [1, 4]
    assert all(r["memory_on_sequences"] == r["batch"] and r["on_tok_s"] > 0 for r in shape["serving"])
    mem = shape["memory"]
    assert mem["host_per_edit_bytes_deltas_on_heap"] - mem["host_per_edit_bytes_deltas_off_heap"] == mem["delta_bytes"]
    assert [r["masks"] for r in data["routing"]] == [1000, 10000] and all(r["agree"] for r in data["routing"])
    assert data["server"]["ok"] and data["server"]["memory_on"]


def test_chat_traffic_asks_every_form_and_swaps_the_subject_for_neighbours():
    from memoir_core.datasets import Case

    traffic = script("chat_traffic")
    case = Case(prompt="Who is the CEO of Zorblax Industries?", target="Marta Quillon",
                rephrases=["Who runs Zorblax Industries?"], subject="Zorblax Industries")
    probes = traffic.probes([case], ["Quellmark Foods"])
    forms = {(p["kind"], p["form"]) for p in probes}
    assert forms == {(k, f) for k in ("question", "paraphrase") for f in traffic.CHAT_FORMS} | {
        ("question", "statement"), ("neighbour", "bare"), ("neighbour", "statement"), ("same subject", "bare")}
    said = {(p["kind"], p["form"]): p.get("prompt") or p["messages"] for p in probes}
    assert said[("question", "statement")] == "The CEO of Zorblax Industries is"
    assert said[("neighbour", "statement")] == "The CEO of Quellmark Foods is"
    assert said[("neighbour", "bare")] == [{"role": "user", "content": "Who is the CEO of Quellmark Foods?"}]
    # another question about the edited subject itself, asked before the edits and after
    assert said[("same subject", "bare")] == [{"role": "user", "content": "Where is Zorblax Industries located?"}]
    assert traffic.same_subject([Case(prompt="Who runs it?", target="x")]) == []  # no subject: nothing to ask
    earlier = said[("paraphrase", "earlier turn")]
    assert [m["role"] for m in earlier] == ["user", "assistant", "user"]
    assert earlier[-1]["content"] == "Who runs Zorblax Industries?"
    assert said[("question", "system")][0]["role"] == "system"
    assert said[("question", "context")][0]["content"].endswith(" Who is the CEO of Zorblax Industries?")
    assert traffic.contains("It is  marta\nQuillon, since 2020", "Marta Quillon")
    assert not traffic.contains("Marta Quill", "Marta Quillon")


def test_aliases(tmp_path):
    data = run("aliases", tmp_path, "--model", "tiny", "--limit", "2")
    rules = {row["rule"]: row for row in data["rows"]}
    assert set(rules) == {"aliases", "aliases, no alias rows", "no aliases"} and data["cases"] == 2
    # routing is by words, whatever the model: named by alias under the default, never with aliases=[]
    assert rules["aliases"]["alias_on"] == 1.0 and rules["no aliases"]["alias_on"] == 0.0
    assert rules["aliases"]["inferred_aliases"] == 1 and rules["no aliases"]["inferred_aliases"] == 0


@pytest.mark.slow  # four server starts, 45 s: the suite's 15 minutes on a CPU without bf16 (CI runs it)
@needs_data
def test_restart_scale(tmp_path):
    store = tmp_path / "store"
    data = run("restart_scale", tmp_path, "--tiny", "--edits", "12", "--store", str(store), "--keep")
    # 3 trained over HTTP, 9 copies written through the store, 3 more over HTTP after the first start
    assert data["edits_before"] == 12 and data["edits_after"] == 15
    assert data["ready_seconds"] > 0 and data["restart_seconds"] > 0 and data["rss_after_restart"] > 0
    again = run("restart_scale", tmp_path, "--tiny", "--store", str(store), "--resnapshot")
    # the same 3 prompts posted again supersede the first run's 3: the count stays
    assert again["edits_before"] == again["edits_after"] == 15 and "resnapshot_seconds" in again
    assert not store.exists()  # without --keep the store goes


@needs_data
def test_relation_masks(tmp_path):
    data = run("relation_masks", tmp_path, "--model", "tiny", "--limit", "3")
    assert data["cases"] == 3 and data["paraphrase_prompts"] >= 3 and data["other_question_prompts"] >= 12
    assert len(data["deltas"]) == data["paraphrase_prompts"] + data["other_question_prompts"]
    for rule in ("whole", "relation", "sum"):
        rows = [r for r in data["rows"] if r["rule"] == rule]
        # a smaller threshold turns off at least as much of either
        for wide, narrow in zip(rows, rows[1:]):
            assert narrow["threshold"] < wide["threshold"]
            assert narrow["other_questions_routed"] <= wide["other_questions_routed"]
            assert narrow["paraphrases_routed"] <= wide["paraphrases_routed"]


@needs_data
def test_answer_key_gate(tmp_path):
    data = run("answer_key_gate", tmp_path, "--model", "tiny", "--limit", "3")
    spread = {r["kind"]: r for r in data["spread"]}
    assert data["cases"] == 3 and spread["paraphrase"]["n"] == 3 and spread["other question, chat"]["n"] == 12
    # every chat form, read at the answer and at the question's last token
    for form in (" (system)", " (earlier turn)", " (context)"):
        for where in ("chat", "chat at question"):
            assert spread[f"paraphrase, {where}{form}"]["n"] == 3 and spread[f"other question, {where}{form}"]["n"] == 12
    assert all(-1 <= r["q5"] <= r["q50"] <= r["q95"] <= 1 for r in data["spread"])
    for pair in ("paraphrase", "paraphrase, chat", "paraphrase, chat at question (earlier turn)"):
        rows = [r for r in data["rows"] if r["paraphrases"] == pair]
        # a higher threshold keeps no more paraphrases and drops no fewer other questions
        for low, high in zip(rows, rows[1:]):
            assert high["threshold"] > low["threshold"]
            assert high["paraphrases_kept"] <= low["paraphrases_kept"]
            assert high["other_questions_dropped"] >= low["other_questions_dropped"]

@needs_data
def test_other_questions(tmp_path):
    data = run("other_questions", tmp_path, "--model", "tiny", "--limit", "3")
    rows = {r["lead"]: r for r in data["rows"]}
    assert data["cases"] == 3 and data["paraphrase_prompts"] == 6 and data["other_question_prompts"] == 24
    assert rows["none"]["paraphrases_routed"] == rows["none"]["other_questions_routed"] == 1.0
    # a smaller lead turns off at least as much of either
    leads = [r for r in data["rows"] if r["lead"] != "none"]
    for wide, narrow in zip(leads, leads[1:]):
        assert narrow["other_questions_routed"] <= wide["other_questions_routed"]
        assert narrow["paraphrases_routed"] <= wide["paraphrases_routed"]


@needs_data
def test_edit_ab(tmp_path):
    data = run("edit_ab", tmp_path, "--model", "tiny", "--edits", "2", "--b", "relation_lead=null")
    a, b = data["rows"]
    assert (a["side"], a["set"], b["set"]) == ("A", "(defaults)", "relation_lead=null")
    assert a["edits"] == b["edits"] == 2 and data["median_ratio"] == b["median_s"] / a["median_s"]
    with pytest.raises(Exception, match="did you mean relation_lead"):
        script("edit_ab").main(["--model", "tiny", "--edits", "1", "--b", "relation_leed=0.1"])


@needs_data
def test_routing_rules(tmp_path):
    data = run("routing_rules", tmp_path, "--model", "tiny", "--limit", "3")
    rows = {r["rule"]: r for r in data["rows"]}
    assert data["edits"] == 3 and data["paraphrase_prompts"] == 6 and data["other_question_prompts"] == 24
    # every rule only adds to what routing turns off
    assert all(rows["none"]["paraphrases_off"] <= r["paraphrases_off"] for r in rows.values())
    assert all(rows["none"]["other_questions_routed"] >= r["other_questions_routed"] for r in rows.values())
    sums = [r for name, r in rows.items() if name.startswith("sum")]
    for wide, narrow in zip(sums[::-1], sums[-2::-1]):  # a lower threshold turns off at least as much
        assert narrow["other_questions_routed"] <= wide["other_questions_routed"]
        assert narrow["paraphrases_off"] >= wide["paraphrases_off"]
    stream = run("routing_rules", tmp_path, "--model", "tiny", "--stream", "--limit", "2", "--extend-limit", "1")
    assert stream["edits"] == 3 and stream["other_question_prompts"] == 0
