"""Units of the edit tools without a model: import rows by line number, the console's filters and
sessions."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from app.http.auth import Keys
from app.http.console.filters import Filters, select
from app.http.console.session import Sessions
from app.http.import_rows import parse
from app.settings import Settings
from memoir_core.errors import InvalidRequestError


def test_jsonl_rows_by_line():
    data = ('\ufeff{"prompt": "a", "target_new": "b", "paraphrases": ["c"], "metadata": {"ticket": "T"}}\n'
            "\n"
            '{"prompt": "a", "target_new": "b", "colour": "red"}\n'
            "[1, 2]\n"
            '{"prompt": "a", "target_new": "b", "dry_run": true}\n').encode()
    rows = parse(data)
    assert [r.line for r in rows] == [1, 3, 4, 5]
    assert rows[0].edit.rephrase_prompts == ["c"] and rows[0].edit.metadata == {"ticket": "T"}
    assert "colour" in rows[1].error and "JSON object" in rows[2].error and "dry_run" in rows[3].error


def test_csv_rows_by_line_with_quoted_newlines_and_metadata_columns():
    data = ('prompt,target_new,paraphrases,subject,ticket,metadata\n'
            '"who is\nthe boss",jane,the boss is|boss?,Acme,T-1,"{""reason"": ""r""}"\n'
            ',nobody,,,,\n'
            'x,y,,,,not json\n'
            'only,two\n').encode()
    rows = parse(data, content_type="text/csv")
    assert [r.line for r in rows] == [2, 4, 5, 6]
    first = rows[0].edit
    assert first.prompt == "who is\nthe boss" and first.rephrase_prompts == ["the boss is", "boss?"]
    assert first.subject == "Acme" and first.metadata == {"reason": "r", "ticket": "T-1"}
    assert "prompt" in rows[1].error and "metadata" in rows[2].error and "2 values" in rows[3].error
    with pytest.raises(InvalidRequestError, match="target_new"):
        parse(b"prompt,answer\na,b\n", "csv")
    with pytest.raises(InvalidRequestError, match="no rows"):
        parse(b"\n\n")
    with pytest.raises(InvalidRequestError, match="limit is 1"):
        parse(b'{"prompt": "a", "target_new": "b"}\n' * 2, max_rows=1)


def record(i, author, subject, day):
    ts = time.mktime(time.strptime(day, "%Y-%m-%d")) - time.timezone + 3600
    return SimpleNamespace(id=f"e{i}", prompt=f"prompt {i}", target_new=f"target {i}", subject=subject,
                           rephrase_prompts=[f"other {i}"], author=author, created_at=ts)


def test_filters():
    records = [record(1, "alice", "Acme", "2026-01-05"), record(2, "bob", "Acme Corp", "2026-02-10"),
               record(3, "alice", None, "2026-03-01")]
    ids = lambda f: [r.id for r in select(records, f)[0]]  # noqa: E731
    assert ids(Filters()) == ["e3", "e2", "e1"]  # newest first
    assert ids(Filters(author="alice")) == ["e3", "e1"]
    assert ids(Filters(subject="acme")) == ["e2", "e1"]
    assert ids(Filters(since="2026-02-01")) == ["e3", "e2"]
    assert ids(Filters(until="2026-02-10")) == ["e2", "e1"]
    assert ids(Filters(q="other 2")) == ["e2"]
    assert select(records, Filters(), limit=1) == ([records[2]], 3)


def test_sessions():
    keys = Keys.from_settings(Settings(admin_keys=SecretStr("ops:" + "a" * 20), api_key=SecretStr("c" * 20)))
    sessions = Sessions()
    assert sessions.sign_in(keys, "c" * 20) is None  # a client key is not an admin key
    assert sessions.sign_in(keys, "wrong") is None and sessions.sign_in(keys, "") is None
    s = sessions.sign_in(keys, "a" * 20)
    assert s.name == "ops" and sessions.get(s.token) is s
    sessions.sign_out(s.token)
    assert sessions.get(s.token) is None
    assert Sessions().sign_in(Keys([]), "").name is None  # no admin key configured: open


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_client_splits_big_files_keeping_line_numbers(fmt):
    from memoir_cli.import_chunks import split

    if fmt == "jsonl":
        lines = ['{"prompt": "p%d", "target_new": "t%d"}' % (i, i) if i % 5 else "" for i in range(1, 30)]
        data = ("\n".join(lines) + "\n").encode()
        expected = [i for i in range(1, 30) if i % 5]
    else:
        rows = ['"multi\nline %d",t%d' % (i, i) if i % 4 == 0 else f"p{i},t{i}" for i in range(20)]
        data = ("prompt,target_new\n" + "\n".join(rows) + "\n").encode()
        expected, line = [], 2
        for i in range(20):
            expected.append(line)
            line += 2 if i % 4 == 0 else 1
    chunks = split(data, fmt, 60)
    assert len(chunks) > 3 and all(len(c.data) <= 60 or c.rows == 1 for c in chunks)
    found = [(chunk.line(row.line), row.edit.prompt) for chunk in chunks for row in parse(chunk.data, fmt)]
    assert [n for n, _ in found] == expected
    assert sum(c.rows for c in chunks) == len(expected)
    assert len(split(data, fmt, 10**6)) == 1
