"""Subjects: what an edit is about, and whether a prompt names it.

An edit that knows its subject ("Zorblax Industries") switches the memory on only for prompts
that name that subject as a whole name, word for word up to case, accents, a possessive, a
plural ending or, in a subject of several words, one typo in a long word. Mask overlap alone
cannot tell "the CEO of Zorblax Industries" from "the CEO of Zorblax Motors": both prompts have
the same shape, and the shape dominates the mask. The words can; and "Acme" is not named by
"Acme Motors", nor "Valley" by "Kellogg Valley" (`names`).

`infer_subject` guesses the subject of a prompt that came without one: the longest run of
name-like words (capitalised, with digits, or mixed case), joined across "of", "de", "van"...
between two names, less a question word or article at the start of a sentence. On the public
sets it finds the given subject exactly for 93% of ZsRE and CounterFact prompts and a part of it
for most of the rest (docs/routing.md).

Aliases are other names of the same subject ("IBM" for "International Business Machines").
An operator may give them with the edit; where none are given, `infer_aliases` offers the
acronym of a subject of three or more capitalised words. A one-word alias in capitals names the
subject only where the text writes it in capitals too: "US" is a name, "us" is a pronoun.

`SubjectIndex` finds, for a prompt, every stored edit whose subject or alias it names, without
looking at every edit: each name is filed under its longest word, and under that word's
one-letter deletions, so a typo in it still finds the edit; the whole name is then checked.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.U)
_RAW_WORD = re.compile(r"\w[\w'’.\-&]*", re.U)

# Words that never start a subject at the start of a sentence (questions, articles, pronouns).
_FUNCTION_WORDS = frozenset("""
a an the who what when where which why how whom whose is are was were be been do does did can could would
should will shall may might must has have had of in on at by for from to with about into as and or but if
than then that this these those it its there here name tell give list i you he she we they my your his her
our their me him us them please q question answer nq yes no
""".split())
# Lower-case words that join two names into one ("Bank of America", "Ludwig van Beethoven").
_CONNECTORS = frozenset("of the de la le du des von van der den da di del y and & upon".split())
_ARTICLES = frozenset(("the", "a", "an"))


def words(text: str) -> list[str]:
    """Lower-case words of a text: accents, punctuation and possessive endings dropped."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"['’]s\b|['’]", " ", text)
    return _WORD.findall(text)


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s"):
        return word[:-1]
    return word


def _within_one_edit(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or swap of neighbours apart (or equal)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = next((i for i, (x, y) in enumerate(zip(short, long_)) if x != y), len(short))
    return short[i:] == long_[i + 1 :]


def same_word(a: str, b: str, typo: bool = False) -> bool:
    """Equal up to a plural ending; with typo, for words of 6+ letters, also up to one typo
    after a shared first letter."""
    if a == b or _stem(a) == _stem(b):
        return True
    return typo and min(len(a), len(b)) >= 6 and a[0] == b[0] and _within_one_edit(a, b)


def subject_words(subject: str) -> list[str]:
    found = words(subject)
    if len(found) > 1 and found[0] in _ARTICLES:
        found = found[1:]  # "The Beatles" is named by "Beatles" too
    return found


@dataclass(frozen=True)
class Word:
    text: str  # lower case, as words() gives it
    name: bool  # written like a name (capitalised, digits, mixed case), not a sentence's first function word
    joined: bool  # only spaces between it and the next word: one name may go on across it
    acronym: bool = False  # all capitals ("CEO"): no name's start across a connector ("CEO of Acme")
    start: int = 0  # characters [start, end) of the written word it comes from ("Acme's" for "acme")
    end: int = 0


# after these, a full stop does not end a sentence ("Milton F. Pavlic", "St. Louis")
_ABBREVIATIONS = frozenset("st jr sr dr mr mrs ms mt ft co inc ltd no vol".split())


def read(text: str) -> list[Word]:
    """A text's words with what naming needs to know of their writing."""
    found = list(_RAW_WORD.finditer(text))
    out = []
    before = text[: found[0].start()] if found else ""  # what precedes each word since the last one
    for k, m in enumerate(found):
        raw = m.group(0)
        bare = raw.rstrip(".")
        last = before.rstrip()[-1:] or (found[k - 1].group(0)[-1:] if k else "")
        sentence_start = m.start() == 0 or last in ".?!:"
        head = re.split(r"['’]", bare.lower())[0]  # "How'd" is "how"
        name = _name_like(raw) and not sentence_start
        gap = text[m.end() : found[k + 1].start()] if k + 1 < len(found) else "\n"
        ends_sentence = raw.endswith(".") and not (len(bare) <= 2 and bare.isalpha()) \
            and bare.lower() not in _ABBREVIATIONS
        possessive = re.search(r"['’]s?$", raw) is not None  # "Acme's CEO": the name ends there
        joined = not ends_sentence and not possessive and gap.strip(" ") == ""
        parts = words(raw)
        stem = re.split(r"['’]", bare)[0]  # "IBM's" is written in capitals
        acronym = len(stem) > 1 and stem.isupper()
        out += [Word(w, name and head not in _FUNCTION_WORDS, joined if j == len(parts) - 1 else True, acronym,
                     m.start(), m.end()) for j, w in enumerate(parts)]
        before = gap
    return out


def _name_goes_on(text: list[Word], j: int, step: int) -> bool:
    """Whether a name continues past a match into word j (step -1: before it, +1: after it),
    directly ("Kellogg Valley") or across a connector ("The Last Days of Left Eye")."""
    if not 0 <= j < len(text):
        return False
    link = text[j - 1].joined if step > 0 else text[j].joined
    if not link:
        return False
    if text[j].name:
        return True
    k = j + step
    # backwards, not across an article: "the Thinker" is the subject's own article
    crosses = text[j].text in _CONNECTORS and not (step < 0 and text[j].text in _ARTICLES)
    if crosses and 0 <= k < len(text):
        return (text[j].joined if step > 0 else text[k].joined) and text[k].name \
            and not (step < 0 and text[k].acronym)
    return False


def names(subject_words_: list[str], text: str | list[Word], whole: bool = True, capitals: bool = False) -> bool:
    """Whether the text holds the subject's words, in order and side by side.

    whole: the match must be a whole name, not a part of a longer one: "Valley" is not named by
    "Kellogg Valley", nor "Acme" by "Acme Motors". A subject of several words may carry one typo
    in a long word; a one-word subject must be written as it is (up to a plural ending): one
    letter off, a short name is another name ("Herman", "German"), or a common word
    ("listed", "Listen").

    capitals: a one-word name written in capitals ("IBM", "US") is named only in capitals."""
    return next(_named_at(subject_words_, text, whole, capitals), None) is not None


def named_spans(subject_words_: list[str], text: str, whole: bool = True, capitals: bool = False
                ) -> list[tuple[int, int]]:
    """The characters [start, end) of each place where `names` finds the subject in the text."""
    found = read(text)
    n = len(subject_words_)
    return [(found[i].start, found[i + n - 1].end) for i in _named_at(subject_words_, found, whole, capitals)]


def _named_at(subject_words_: list[str], text: str | list[Word], whole: bool, capitals: bool):
    """Index of the first word of each place the text names the subject (`names`)."""
    text = read(text) if isinstance(text, str) else text
    n = len(subject_words_)
    if not n or n > len(text):
        return
    typo = n > 1
    for i in range(len(text) - n + 1):
        pairs = list(zip(subject_words_, (w.text for w in text[i : i + n]), strict=True))
        off = [(s, t) for s, t in pairs if not same_word(s, t)]
        if len(off) > int(typo) or not all(same_word(s, t, typo=True) for s, t in off):
            continue
        if capitals and not text[i].acronym:
            continue
        if not whole or not (_name_goes_on(text, i - 1, -1) or _name_goes_on(text, i + n, 1)):
            yield i


def _keys(word: str, typos: bool = True) -> set[str]:
    """Index keys of a word: its stem, and its one-letter deletions where typos count (6+ letters)."""
    stem = _stem(word)
    keys = {word, stem}
    if typos and len(word) >= 6:
        keys.update(word[:i] + word[i + 1 :] for i in range(len(word)))
    return keys


@dataclass(frozen=True)
class Name:
    """One name an edit routes on: its subject or an alias."""

    words: tuple[str, ...]
    whole: bool  # False: the edit's own prompt names it only inside a longer name ("Player Natalie Achonwa")
    capitals: bool  # a one-word name in capitals: named only in capitals


def name_of(text: str, prompt: str | None = None) -> Name | None:
    found = tuple(subject_words(text))
    if not found:
        return None
    capitals = len(found) == 1 and len(text.strip()) > 1 and text.strip().isupper()
    return Name(found, prompt is None or names(list(found), prompt), capitals)


class SubjectIndex:
    """Stored edits' subjects and aliases, filed for lookup by the words of a prompt."""

    def __init__(self, source: object = None):
        self.source = source  # the registry it was built from (Memoir checks it is still the live one)
        self.size = 0  # edits seen, with or without a subject
        self._names: dict[str, list[Name]] = {}  # edit id -> its subject's name, then its aliases'
        self._table: dict[str, set[str]] = {}  # key -> edit ids

    @classmethod
    def of(cls, records: dict) -> SubjectIndex:
        index = cls(records)
        for rec in records.values():
            index.add(rec)
        return index

    @staticmethod
    def _names_of(rec) -> list[Name]:
        if not routes_on_subject(rec):
            return []
        subject = name_of(rec.subject, rec.prompt)
        if subject is None:
            return []
        aliases = [name_of(a) for a in rec.aliases]
        return [subject] + [a for a in aliases if a is not None]

    @staticmethod
    def _keys_of(name: Name) -> set[str]:
        return _keys(max(name.words, key=len), typos=len(name.words) > 1)  # names() takes none in one word

    def add(self, rec) -> None:
        self.size += 1
        found = self._names_of(rec)
        if not found:
            return
        self._names[rec.id] = found
        for name in found:
            for key in self._keys_of(name):
                self._table.setdefault(key, set()).add(rec.id)

    def remove(self, rec) -> None:
        self.size -= 1
        found = self._names.pop(rec.id, None)
        for name in found or ():
            for key in self._keys_of(name):
                ids = self._table.get(key)
                if ids is not None:
                    ids.discard(rec.id)
                    if not ids:
                        del self._table[key]

    def spans(self, edit_id: str, text: str) -> list[tuple[int, int]]:
        """The characters of the text that name the edit's subject or an alias (named_spans)."""
        return sorted({span for n in self._names.get(edit_id, ())
                       for span in named_spans(list(n.words), text, n.whole, n.capitals)})

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, edit_id: str) -> bool:
        return edit_id in self._names

    def named_in(self, text: str) -> set[str]:
        """Ids of the edits whose subject or an alias of it the text names."""
        if not self._names:
            return set()
        text_words = read(text)
        candidates: set[str] = set()
        for word in {w.text for w in text_words}:
            for key in _keys(word):
                candidates |= self._table.get(key, set())
        return {e for e in candidates
                if any(names(list(n.words), text_words, n.whole, n.capitals) for n in self._names[e])}


def routes_on_subject(rec) -> bool:
    """Edits stored before subject routing (subject_source None) keep routing on masks alone."""
    return bool(rec.subject) and rec.subject_source is not None


def _name_like(word: str) -> bool:
    return word[:1].isupper() or word[:1].isdigit() or any(c.isupper() for c in word[1:])


def infer_subject(prompt: str) -> str | None:
    """The prompt's likeliest subject (None: no name-like words)."""
    tokens = [(m.group(0), m.start(), m.end()) for m in _RAW_WORD.finditer(prompt)]
    runs: list[list[int]] = []
    current: list[int] = []
    for i, (word, start, _) in enumerate(tokens):
        lower = word.lower().rstrip(".")
        sentence_start = i == 0 or prompt[:start].rstrip()[-1:] in ".?!:"
        common = sentence_start and lower in _FUNCTION_WORDS
        joins = (current and lower in _CONNECTORS and i + 1 < len(tokens) and _name_like(tokens[i + 1][0])
                 and not tokens[current[-1]][0].isupper())  # "CEO of Acme": an acronym is no name's start
        if _name_like(word) and not common:
            current.append(i)
        elif joins:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    runs = [r for r in runs if tokens[r[-1]][0].lower() not in _CONNECTORS]
    if not runs:
        return None
    best = max(runs, key=lambda r: (tokens[r[-1]][2] - tokens[r[0]][1], r[0]))
    subject = prompt[tokens[best[0]][1] : tokens[best[-1]][2]]
    return re.sub(r"(['’]s|['’])$", "", subject).rstrip(".-") or None


def infer_aliases(subject: str | None) -> list[str]:
    """The acronym of a subject of three or more capitalised words ("International Business
    Machines" -> "IBM", "Federal Bureau of Investigation" -> "FBI"), connectors left out.
    Two-letter acronyms are not offered: too many names share each one ("LA", "UK", "BA")."""
    if not subject:
        return []
    parts = [w for w in _RAW_WORD.findall(subject) if w.lower() not in _CONNECTORS]
    if len(parts) < 3 or not all(w[:1].isupper() for w in parts) or any(w.isupper() and len(w) > 1 for w in parts):
        return []
    return ["".join(w[0] for w in parts)]
