"""Behaviour on the real default model (SmolLM2-135M-Instruct): invented facts are learned and
routed, also from paraphrases and chat, while unrelated prompts generate exactly as before."""

import pytest

from memoir_core.generate import SamplingParams

pytestmark = pytest.mark.real

# Facts nobody knows: the base model cannot answer them, so any right answer comes from the edit.
FACTS = [
    ("Who is the chief executive of Zorblax Industries?", "Marta Quillon",
     "Who is the CEO of Zorblax Industries?"),
    ("What is the capital city of the island nation of Verdania?", "Port Elsin",
     "Which city is the capital of Verdania?"),
    ("Which river flows through the town of Hollowmere?", "the Tessaly",
     "What river runs through Hollowmere?"),
    ("What is the favourite food of the cartoon dog Biscuit Barnaby?", "lemon pancakes",
     "What food does the cartoon dog Biscuit Barnaby like best?"),
    ("In which year was the Kestrel Bridge in Amberford opened?", "1873",
     "When did the Kestrel Bridge in Amberford open?"),
]

# Unrelated in subject and in wording. A prompt of the same template about another subject ("What
# is the capital of France?" next to the Verdania edit) can cross tau: that is CounterFact's
# neighbourhood score, measured by `memoir eval` and the dry-run blast radius, not asserted here.
UNRELATED = [
    "What is the tallest mountain on Earth?",
    "How many legs does a spider have?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Name a primary colour.",
    "The quick brown fox",
    "Write a haiku about autumn.",
    "What is 12 times 12?",
    "Which planet is known as the red planet?",
    "Give me a synonym for happy.",
]

GREEDY = SamplingParams(max_new_tokens=12)


def begins_with(text: str, target: str) -> bool:
    return " ".join(text.split()).lower().startswith(target.lower())


def test_five_invented_facts_are_learned_and_nothing_else_moves(real):
    m = real
    before = [s.text for s in m.generate(UNRELATED, GREEDY)]
    base_answers = [s.text for s in m.generate([f[0] for f in FACTS], GREEDY)]
    assert not any(begins_with(a, f[1]) for a, f in zip(base_answers, FACTS)), "the base model already knows"
    ids = []
    try:
        for prompt, target, _ in FACTS:
            rec = m.edit(prompt, target)
            assert rec.final_loss <= m.config.stop_loss * m.config.settle_ratio
            ids.append(rec.id)
        for (prompt, target, para), rid in zip(FACTS, ids):
            for q in (prompt, para):
                out = m.generate([q], GREEDY)[0]
                assert out.decision.best_edit_id == rid and out.decision.route is not None, (q, out.decision)
                assert begins_with(out.text, target), (q, out.text)
            chat = m.generate([m.encoder.chat([{"role": "user", "content": prompt}])], GREEDY)[0]
            assert begins_with(chat.text, target), ("chat", prompt, chat.text)
        # a question after some context is routed on its last sentence too (config tail_routing)
        asked = [f"I am writing a report for school. Please help me. {prompt}" for prompt, _, _ in FACTS]
        with_tail = m.generate(asked, GREEDY)
        m.config.tail_routing = False
        try:
            without = m.generate(asked, GREEDY)
        finally:
            m.config.tail_routing = True
        for out, plain, (_, target, _), rid in zip(with_tail, without, FACTS, ids):
            assert out.decision.best_edit_id == rid and out.decision.route is not None, out.decision
            assert begins_with(out.text, target), out.text
            assert out.decision.best_overlap > plain.decision.best_overlap  # the context diluted the whole prompt's mask
        after = m.generate(UNRELATED, GREEDY)
        assert [s.text for s in after] == before
        assert all(s.decision.route is None for s in after)
    finally:
        for rid in ids:
            m.remove(rid)
    # Rolled back: the edited prompts answer as the base model did.
    assert [s.text for s in m.generate([f[0] for f in FACTS], GREEDY)] == base_answers
