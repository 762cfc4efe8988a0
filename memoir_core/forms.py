"""Other surface forms of an edit's prompt, trained with it so that every form answers.

A question edit ("Who is the CEO of Acme?") learns to answer the question; asked as a
statement to complete ("The CEO of Acme is", the completions API's form) the memory switches on
but the model goes on in its own words. `statement_form` turns the common question shapes into
the statement they ask to complete, by rule (no model call, so an edit costs one row more, not a
generation): "Who/What/Which is X?" -> "X is"; "When/Where was <subject> Y?" -> "<subject> was
Y in". Other shapes get no statement row.
"""

from __future__ import annotations

import re

_COPULA = r"(is|was|are|were)"
_WHO_IS = re.compile(rf"^(?:who|what|which)\s+{_COPULA}\s+(.+)$", re.IGNORECASE)
_WHEN_WHERE = re.compile(rf"^(?:when|where|in what year|in which year)\s+{_COPULA}\s+(.+)$", re.IGNORECASE)


def statement_form(prompt: str, subject: str | None) -> str | None:
    """The statement a question asks to complete, or None (not a question of a known shape)."""
    text = prompt.strip()
    if not text.endswith("?"):
        return None
    text = text[:-1].strip()
    if (m := _WHEN_WHERE.match(text)) and subject:
        verb, rest = m.group(1).lower(), m.group(2)
        if rest.lower().startswith(subject.lower()) and rest[len(subject):].strip():
            return f"{rest[: len(subject)]} {verb} {rest[len(subject):].strip()} in"
        return None
    if m := _WHO_IS.match(text):
        verb, rest = m.group(1).lower(), m.group(2)
        if len(rest.split()) < 2:
            return None  # "Who is Marta?": the statement "Marta is" asks for anything
        return f"{rest[0].upper()}{rest[1:]} {verb}"
    return None


def alias_forms(prompt: str, subject: str | None, aliases) -> tuple[str, ...]:
    """The prompt with each alias in its subject's place (where the prompt writes the subject
    as given, up to case): "Who is the CEO of IBM?" for the alias "IBM"."""
    if not subject or not aliases:
        return ()
    at = prompt.lower().find(subject.lower())
    if at < 0:
        return ()
    return tuple(prompt[:at] + alias + prompt[at + len(subject):] for alias in aliases)


# Other questions about an edit's subject: their masks keep the edit off for prompts that ask
# something else about the subject (config.other_question_lead, routing.py). Kept apart from
# neighbours.RELATIONS, the dry run's and chat_traffic.py's probes, so those measure questions
# the edit never saw.
# No question about who holds or runs the subject: "Who owns X?" took "Who runs X?", a paraphrase
# of "Who is the CEO of X?", away from a CEO edit.
OTHER_QUESTIONS = ("Tell me about {s}.", "What kind of thing is {s}?", "What does {s} look like?",
                   "What is the history of {s}?", "How old is {s}?", "Why is {s} important?")
_WORD = re.compile(r"[a-z0-9]+")
_FUNCTION_WORDS = frozenset("a an the of is was are were what who whom which when where why how in on at to for by "
                            "with about me tell kind thing does do did".split())


def other_questions(prompt: str, subject: str | None, n: int) -> tuple[str, ...]:
    """Up to n other questions about the subject, leaving out any that shares a content word
    with the prompt's own question ("Who owns X?" is not another question for an edit of "Who
    owns X?"; it may well be a paraphrase)."""
    if not subject or n <= 0 or subject.casefold() not in prompt.casefold():
        return ()
    words = lambda text: set(_WORD.findall(text.casefold())) - _FUNCTION_WORDS  # noqa: E731
    own = words(prompt) - words(subject)
    out = []
    for template in OTHER_QUESTIONS:
        if words(template.replace("{s}", "")) & own:
            continue
        out.append(template.format(s=subject))
        if len(out) == n:
            break
    return tuple(out)
