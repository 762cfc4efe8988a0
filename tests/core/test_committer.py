"""The commit rule in the library (memoir_core.committer): train, log durably, then apply, under
a shared log's write lock; usable without the server."""

from __future__ import annotations

import pytest

from memoir_core.committer import Committer
from memoir_core.errors import DurabilityError, EditNotFoundError
from memoir_core.replica import LogEntry
from tests.support.state_support import CheckingStore
from tests.support.tiny import make_memoir

FAST = dict(max_steps=3, max_neighbours=0)


class Shared(CheckingStore):
    """A shared log: busy for the first `busy` tries; its lock hands over another replica's edit."""

    shared = True
    replica = "test"

    def __init__(self, memoir, busy: int, others: list[LogEntry]):
        super().__init__(memoir)
        self.busy, self.others, self.calls = busy, others, []

    def begin_write(self, after):
        self.calls.append(("begin", after))
        if self.busy:
            self.busy -= 1
            return None
        return [e for e in self.others if e.version > after]

    def abort_write(self):
        self.calls.append(("abort",))


def test_an_edit_is_logged_before_it_is_applied_and_a_rollback_too():
    m = make_memoir(**FAST)
    store = CheckingStore(m)
    store.create(None, m.basis)
    c = Committer(m, store)
    rec = c.edit("the capital city of the country is", "paris", edit_id="a")
    assert m.edits["a"] is rec and m.version == 1 and store.writes == [("edit", "a", 1)]
    assert c.edit("the capital city of the country is", "paris", edit_id="a") is rec  # a retry: nothing new
    c.rollback("a")
    assert "a" not in m.edits and store.writes[-1] == ("remove", "a", 2) and m.version == 2
    with pytest.raises(EditNotFoundError):
        c.rollback("a")
    assert store.load().version == 2 and not store.load().edits


def test_an_edit_the_store_could_not_write_is_not_applied_and_stops_edits():
    m = make_memoir(**FAST)
    store = CheckingStore(m)
    store.create(None, m.basis)
    c = Committer(m, store)
    store.fail = True
    digest = m.memory.digest()
    with pytest.raises(DurabilityError):
        c.edit("who is the chief executive", "alice")
    assert m.memory.digest() == digest and c.failed
    store.fail = False
    with pytest.raises(DurabilityError, match="restart"):
        c.edit("who is the chief executive", "alice")


def test_with_a_shared_log_it_waits_for_the_lock_and_trains_on_the_newest_memory(monkeypatch):
    source = make_memoir(**FAST)  # another replica: its edit reaches this one through the log
    theirs = source.edit("the quick brown fox", "jumps")
    m = make_memoir(**FAST)
    store = Shared(m, busy=2, others=[LogEntry(theirs.version, "edit", theirs.id, theirs)])
    store.create(None, m.basis)
    c = Committer(m, store)
    monkeypatch.setattr(Committer, "RETRY", 0.001)
    rec = c.edit("paris london berlin", "rome")
    assert theirs.id in m.edits and rec.version == 2 and m.version == 2
    assert [call[0] for call in store.calls] == ["begin", "begin", "begin"] and not c.locked
    assert m.memory.digest()["edits"] == [theirs.id, rec.id]
    with pytest.raises(EditNotFoundError):  # a failed rollback gives the lock back
        c.rollback("nope")
    assert store.calls[-1] == ("abort",) and not c.locked
