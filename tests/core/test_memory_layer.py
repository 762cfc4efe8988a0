"""The residual memory on tiny random models: exactness, masking, routing, caching."""

import copy

import numpy as np
import pytest
import torch

from memoir_core.errors import InvalidRequestError, UnsupportedArchitectureError
from memoir_core.evaluate import teacher_forced
from memoir_core.generate import GenSequence, SamplingParams
from memoir_core.memory_layer import BatchRouting, Decision, Route
from memoir_core.tophash import span_mean
from tests.support.tiny import make_memoir, tiny_model, tiny_tokenizer

ARCHS = ["llama", "gpt2", "gpt_neox", "gptj"]


def logits_of(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits


@pytest.mark.parametrize("kind", ARCHS)
def test_memory_off_and_zero_memory_are_bit_identical_to_base(kind):
    tok = tiny_tokenizer()
    base = tiny_model(kind, len(tok))
    reference = copy.deepcopy(base)
    from memoir_core.config import MemoirConfig
    from memoir_core.memoir import Memoir

    m = Memoir(base, tok, MemoirConfig(k=32), background=["the quick brown fox", "who is the chief"])
    ids = tok("who is the chief executive").input_ids
    expected = logits_of(reference, ids)
    assert torch.equal(logits_of(m.model, ids), expected)  # no routing attached: plain base
    # Routed, but the memory is empty: the bank has no masks, the memory stays off.
    enc = m.encoder.plain("who is the chief executive")
    scored = teacher_forced(m, [enc], [[ids[-1]]])
    assert scored.decisions[0].route is None
    # Memory on with all-zero columns adds exactly nothing.
    idx = torch.arange(32)
    zero = Route("zero", 0, idx, torch.zeros(32, m.d_out), m._offset(idx))
    with m.layer.use(BatchRouting.fixed([Decision(zero, "zero", 1.0, 0)])), torch.inference_mode():
        on = m.model(input_ids=torch.tensor([ids])).logits
    assert torch.equal(on, expected)


@pytest.mark.parametrize("kind", ARCHS)
def test_edit_changes_only_masked_columns_and_rollback_is_exact(kind):
    m = make_memoir(kind)
    before = m.weights.weight.clone()
    rec = m.edit("who is the chief executive of the company", "jane roe")
    changed = (m.weights.weight != before).any(dim=0).nonzero().flatten()
    assert changed.numel() > 0
    assert set(changed.tolist()) <= set(rec.idx.tolist())
    assert rec.idx.numel() == m.config.k
    m.remove(rec.id)
    assert torch.equal(m.weights.weight, before)
    assert len(m.bank) == 0 and m.version == 2


def test_edit_is_learned_on_tiny_model():
    m = make_memoir("llama", max_steps=80, stop_loss=0.05)
    prompt = "who is the chief executive of the company"
    rec = m.edit(prompt, "jane roe")
    assert rec.final_loss <= 0.05 and rec.steps > 0
    out = m.generate([prompt], SamplingParams(max_new_tokens=4))[0]
    assert out.decision.route is not None and out.decision.best_edit_id == rec.id
    assert out.text.strip().startswith("jane roe")


def test_routing_in_a_mixed_batch_equals_routing_each_alone():
    m = make_memoir("llama", max_steps=20)
    m.edit("who is the chief executive of the company", "jane roe")
    m.edit("numbers one two three four", "five six")
    prompts = ["who is the chief executive of the company", "paris london berlin rome",
               "numbers one two three four"]
    params = SamplingParams(max_new_tokens=6)
    together = m.generate(prompts, params)
    alone = [m.generate([p], params)[0] for p in prompts]
    for a, b in zip(together, alone):
        assert a.out_ids == b.out_ids
        assert (a.decision.best_edit_id, a.decision.route is None) == (b.decision.best_edit_id, b.decision.route is None)
        assert a.decision.best_overlap == pytest.approx(b.decision.best_overlap, abs=2 / m.config.k)
    assert together[0].decision.route is not None and together[1].decision.route is None


def _recompute_greedy(m, seq, until: int | None = None):
    """Greedy continuation without any KV cache: one full forward per new token, routing fixed;
    the memory acts on the positions before `until` (None: all of them)."""
    ids = list(seq.prompt_ids)
    routing = BatchRouting.fixed([seq.decision])
    out = []
    for _ in range(len(seq.out_ids)):
        active = torch.ones(1, len(ids), dtype=torch.bool)
        if until is not None:
            active[0, until:] = False
        span = torch.ones(1, len(ids), dtype=torch.bool)
        with m.layer.use(BatchRouting(decide=lambda f, **_: [seq.decision], span=span, active=active)), \
                torch.inference_mode():
            logits = m.model(input_ids=torch.tensor([ids])).logits
        tok = int(logits[0, -1].argmax())
        out.append(tok)
        ids.append(tok)
    del routing
    return out


def test_kv_cache_generation_equals_recomputation():
    m = make_memoir("llama", max_steps=20, release_after_answer=False)
    m.edit("who is the chief executive of the company", "jane roe")
    for prompt in ["who is the chief executive of the company", "paris london berlin"]:
        seq = m.generate([prompt], SamplingParams(max_new_tokens=8))[0]
        if seq.finish_reason == "stop" and len(seq.out_ids) < 8:
            seq.out_ids = seq.out_ids  # an EOS ended it early: compare what was produced
        assert _recompute_greedy(m, seq) == seq.out_ids


def test_the_memory_lets_go_once_the_answer_is_out():
    m = make_memoir("llama", max_steps=80, stop_loss=0.05)
    prompt = "who is the chief executive of the company"
    m.edit(prompt, "jane roe")
    seq = m.generate([prompt], SamplingParams(max_new_tokens=8, ignore_eos=True))[0]
    assert seq.decision.route is not None and seq.text.strip().startswith("jane roe")
    said = next(k for k in range(1, len(seq.out_ids) + 1) if "jane roe" in m.encoder.decode(seq.out_ids[:k]))
    # the token that completed the answer is the last one read with the memory on
    until = len(seq.prompt_ids) + said - 1
    assert _recompute_greedy(m, seq, until) == seq.out_ids
    assert _recompute_greedy(m, seq) != seq.out_ids  # held on, the memory would have gone on otherwise
    assert seq.decision.route is not None  # the decision reported stays the one made at prefill
    held = make_memoir("llama", max_steps=80, stop_loss=0.05, release_after_answer=False)
    held.edit(prompt, "jane roe")
    kept = held.generate([prompt], SamplingParams(max_new_tokens=8, ignore_eos=True))[0]
    assert _recompute_greedy(held, kept) == kept.out_ids


def test_sequences_joining_a_running_batch_decode_as_if_alone():
    m = make_memoir("llama", max_steps=20)
    m.edit("who is the chief executive of the company", "jane roe")
    params = SamplingParams(max_new_tokens=8)
    prompts = ["paris london", "who is the chief executive of the company", "the quick brown fox jumps"]
    alone = [m.generate([p], params)[0].out_ids for p in prompts]
    dec = m.decoder()
    seqs = [GenSequence(m.encoder.plain(p).ids, (0, len(m.encoder.plain(p).ids)), params) for p in prompts]
    dec.add([seqs[0]])
    dec.step()
    dec.step()
    dec.add(seqs[1:])  # join mid-flight, with different prompt lengths
    while dec.running:
        dec.step()
    assert [s.out_ids for s in seqs] == alone


def test_sampling_is_reproducible_with_a_seed():
    m = make_memoir("llama")
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    a = m.generate(["paris london"], params)[0].out_ids
    b = m.generate(["paris london"], params)[0].out_ids
    assert a == b


def test_stop_strings_cut_the_text():
    m = make_memoir("llama", max_steps=80, stop_loss=0.05)
    prompt = "who is the chief executive of the company"
    m.edit(prompt, "jane roe")
    seq = m.generate([prompt], SamplingParams(max_new_tokens=6, stop=("roe",)))[0]
    assert seq.finish_reason == "stop"
    assert "roe" not in seq.text and seq.text.strip().startswith("jane")


def test_bad_input_raises_typed_errors():
    m = make_memoir("llama", max_target_tokens=4, max_prompt_tokens=20)
    with pytest.raises(InvalidRequestError, match="prompt"):
        m.edit("   ", "x")
    with pytest.raises(InvalidRequestError, match="target_new"):
        m.edit("who is it", "")
    with pytest.raises(InvalidRequestError, match="limit"):
        m.edit("who is it", "one two three four five six seven eight nine ten")
    with pytest.raises(InvalidRequestError, match="limit"):
        m.edit(" ".join(["paris"] * 50), "x")
    with pytest.raises(InvalidRequestError):
        m.generate(["paris"], SamplingParams(temperature=-1))
    assert len(m.edits) == 0 and m.version == 0


def test_unsupported_architecture_is_refused():
    from transformers import BertConfig, BertLMHeadModel

    from memoir_core.memoir import Memoir

    model = BertLMHeadModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, is_decoder=True))
    with pytest.raises(UnsupportedArchitectureError, match="bert"):
        Memoir(model, tiny_tokenizer())


def test_a_different_prompt_with_the_same_mask_does_not_replace_an_edit():
    """Only the same prompt supersedes: identical masks (possible on a small model) keep both edits."""
    m = make_memoir("llama")
    first = m.edit("who is the chief executive of the company", "jane roe")
    m.tophash.masks = lambda features: first.idx.expand(features.shape[0], -1).clone()  # every text: one mask
    second = m.edit("numbers one two three four", "five six")
    assert second.supersedes is None and set(m.edits) == {first.id, second.id}
    third = m.edit("Who is the  chief executive of the company", "john doe")  # same prompt, other case/spacing
    assert third.supersedes == first.id and set(m.edits) == {second.id, third.id}


def test_an_extra_routing_key_scores_key_margin_below_an_edit_mask():
    """Chat-form keys sit near many plain prompts: a query matches one only key_margin above tau."""
    m = make_memoir("llama", key_margin=0.6, chat_rows=False)
    rec = m.edit("who is the chief executive of the company", "jane roe")
    other = torch.tensor(sorted(set(range(m.width)) - set(rec.route_mask.tolist()))[: m.config.k])
    m.keybank.add(rec.id, other.numpy()[None])  # a key that shares no column with the edit's mask
    (via_key,) = m.best(other.numpy()[None])
    (via_mask,) = m.best(rec.route_mask[None])
    assert via_key.edit_id == via_mask.edit_id == rec.id
    assert via_mask.overlap == 1.0 and via_key.overlap == pytest.approx(0.4)
    m.tophash.masks = lambda features: other.expand(features.shape[0], -1).clone()
    assert m.decide(torch.zeros(1, m.width))[0].route is None  # 0.4 < tau 0.5
    m.config.key_margin = 0.0
    assert m.decide(torch.zeros(1, m.width))[0].route.edit_id == rec.id


def test_norm_pooling_weighs_each_token_by_its_distance_from_the_centre():
    acts = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [9.0, 9.0]]])
    span = torch.tensor([[True, True, False]])  # the third token is outside the prompt
    assert torch.allclose(span_mean(acts, span), torch.tensor([[2.0, 2.0]]))
    # distances 1 and 5 from the origin: (1 * [1, 0] + 5 * [3, 4]) / 6
    assert torch.allclose(span_mean(acts, span, torch.zeros(2)), torch.tensor([[16 / 6, 20 / 6]]))


@pytest.mark.parametrize("pool", ["mean", "norm"])
def test_an_edit_routes_its_own_prompt_to_itself_under_either_pooling(pool):
    m = make_memoir("llama", pool=pool)
    rec = m.edit("who is the chief executive of the company", "jane roe")
    decision = m.decide(m.features([m.encoder.plain("who is the chief executive of the company")]))[0]
    assert decision.best_edit_id == rec.id and decision.best_overlap >= 0.95
    # norm pooling routes on its own mask and trains the columns the plain mean picks
    assert (rec.route is None) == (pool == "mean")
    assert rec.idx.tolist() == m.colhash.masks(m.features([m.encoder.plain(rec.prompt)], centre=None))[0].tolist()
    with pytest.raises(ValueError, match="pool"):
        make_memoir("llama", pool="max")


@pytest.mark.parametrize("by_columns", [True, False])
def test_neighbours_include_the_edits_whose_columns_a_new_edit_trains(by_columns):
    """Under norm pooling the routing masks are not the columns: an edit whose routing mask is far
    from the new one's but whose columns it shares is still co-trained (when asked)."""
    m = make_memoir("llama", pool="norm", max_neighbours=0, neighbour_columns=by_columns)
    first = m.edit("who is the chief executive of the company", "jane roe")
    second = m.edit("where was the painter born", "oslo")
    m.config.max_neighbours, m.config.neighbour_overlap = 2, 0.9
    # a routing mask that shares no column with either edit's (k = 32 of 128: room for it)
    query = np.setdiff1d(np.arange(m.width), np.union1d(first.route, second.route))[None, : m.config.k]
    assert query.shape[1] == m.config.k
    found = m._neighbours(query, second.idx, exclude=None)
    assert [r.id for r in found] == ([second.id] if by_columns else [])
    assert m._neighbours(query, second.idx, exclude=second.id) == []
    assert m.shared_columns(first.id).get(second.id, 0) == len(np.intersect1d(first.idx, second.idx))


@pytest.mark.parametrize("crowd", [0, 6, 7])
def test_a_prompt_that_matches_a_crowd_of_masks_alike_leaves_the_memory_off(crowd):
    """The gap rule: the best match must beat the gap_rank-th best stored mask by min_gap."""
    m = make_memoir("llama", pool="norm", max_neighbours=0, gap_rank=8, min_gap=0.06)
    prompt = "who is the chief executive of the company"
    rec = m.edit(prompt, "jane roe")
    route = np.asarray(rec.route)
    spare = np.setdiff1d(np.arange(m.width), route)
    for i in range(crowd):  # masks 31 of 32 columns like the edit's: a template many edits share
        m.bank.add(f"crowd-{i}", np.sort(np.append(route[np.arange(len(route)) != i], spare[i])))
    features = m.features([m.encoder.plain(prompt)])
    decision = m.decide(features)[0]
    assert decision.best_edit_id == rec.id
    # 7 look-alikes make the edit's own mask only 1/32 better than the 8th best: off
    assert (decision.route is None) == (crowd == 7)
    m.config.min_gap = 0.0
    assert m.decide(features)[0].route is not None


def test_the_last_sentence_of_a_prompt_is_found_in_plain_and_chat_form(tokenizer):
    from memoir_core.prompts import PromptEncoder

    enc = PromptEncoder(tokenizer)
    text = "The quick brown fox jumps over the dog. Who is the chief executive of the company?"
    plain = enc.plain(text)
    assert tokenizer.decode(plain.ids[plain.tail[0] : plain.tail[1]]).strip() == "Who is the chief executive of the company?"
    assert plain.tail[1] == plain.span[1]
    for one in ("Who is the chief executive of the company?",
                "Hi. Who is the chief executive of the company?",  # too short a sentence to cut off
                "The chief of the company is Jane. Roe",  # ... or too short a rest
                "What war did Carlos W. Colby fight in?", "Who starred in Mr. Smith Carries On?",  # initials, titles
                "In what war did S.L.A. Marshall fight in?", "the quick brown fox. who is the chief of it"):  # no capital
        assert enc.plain(one).tail is None, one
    chat = enc.chat([{"role": "user", "content": text}])
    assert chat.span[0] < chat.tail[0] and chat.tail[1] == chat.span[1]
    assert tokenizer.decode(chat.ids[chat.tail[0] : chat.tail[1]]).strip() == "Who is the chief executive of the company?"


def test_a_prompts_last_sentence_is_a_second_way_in():
    m = make_memoir("llama", max_neighbours=0)
    rec = m.edit("who is the chief executive of the company", "jane roe")
    own = m.features([m.encoder.plain("who is the chief executive of the company")])
    other = m.features([m.encoder.plain("numbers one two three four five six")])
    assert m.decide(other)[0].route is None
    both = torch.cat([other, own])
    # row 0: the whole prompt matches nothing, its last sentence the edit; row 1 has no tail
    decisions = m.decide(both, ([0], own))
    assert decisions[0].route.edit_id == rec.id and decisions[1].route.edit_id == rec.id
    # a tail that matches worse never replaces a whole prompt that routes
    assert m.decide(own, ([0], other))[0].route.edit_id == rec.id
    m.config.tail_routing = False
    assert m.decide(both, ([0], own))[0].route is None


def test_generation_routes_a_question_after_context_on_its_last_sentence():
    m = make_memoir("llama", max_steps=60, stop_loss=0.05, max_neighbours=0)
    rec = m.edit("who is the chief executive of the company", "jane roe")
    prompt = m.encoder.plain("Numbers one two three four five six seven. Who is the chief executive of the company")
    assert prompt.tail is not None
    seen = []
    real_decide = m.decide
    m.decide = lambda features, tails=None, texts=None, acts=None: seen.append(tails) or real_decide(features, tails, texts, acts)
    out = m.generate([prompt, "numbers one two three"], SamplingParams(max_new_tokens=2))
    (rows, tail_features), = seen
    assert rows == [0] and tail_features.shape == (1, m.width)
    assert out[0].decision.best_edit_id == rec.id and out[1].decision.route is None
