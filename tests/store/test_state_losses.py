"""Acknowledged edits that the disk lost: a whole last record with a flipped bit, and losses
that leave the journal well formed (cut at a record boundary, cut to 0 bytes, a deleted
segment). Start-up refuses and `memoir state verify` exits 1, naming what is lost, and nothing
is changed on disk; accepting the loss (--accept-state-loss) starts without it, loudly, and
keeps the damaged bytes."""

from __future__ import annotations

import os

import pytest

from memoir_cli.main import main
from memoir_core.errors import StateCorruptError
from memoir_core.store import DirectoryStore, journal
from tests.store.test_state_store import _flip, build, reload, segments
from tests.support.state_support import assert_matches, expected_at, record


def _files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name != "LOCK":
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def _last(seg) -> journal.Entry:
    return journal.scan(bytearray(seg.read_bytes())).entries[-1]


# where the bit is flipped in the last record: its payload, its JSON header, the frame's
# header length, the sha256 it carries
FLIPS = {"payload": lambda e: e.payload[0] + 40, "header": lambda e: e.offset + journal.PREFIX + 12,
         "frame length": lambda e: e.offset + 5, "checksum": lambda e: e.offset + 30}


@pytest.mark.parametrize("where", list(FLIPS))
def test_a_flipped_bit_in_the_last_record_is_corruption(tmp_path, capsys, where):
    build(tmp_path, 5)
    with DirectoryStore(tmp_path) as store:
        store.load()
        store.log_edit(record(6))  # the last record is an edit, with a payload
    seg = segments(tmp_path)[-1]
    last = _last(seg)
    _flip(seg, FLIPS[where](last))
    before = _files(tmp_path)
    with pytest.raises(StateCorruptError, match="not a torn write") as err:
        reload(tmp_path)
    msg = str(err.value)
    assert seg.name in msg and f"at byte {last.offset}" in msg and "--accept-state-loss" in msg
    if where != "header":
        assert "version 6, edit or rollback 'e6'" in msg
    assert main(["state", "verify", str(tmp_path)]) == 1
    assert "not a torn write" in capsys.readouterr().err
    assert _files(tmp_path) == before  # nothing cut, nothing repaired

    loaded, notes = reload(tmp_path, accept_loss=True)
    assert_matches(loaded, expected_at(5))
    assert any("ACKNOWLEDGED EDITS LOST" in n for n in notes)
    aside = seg.with_name(f"{seg.name}.damaged-{last.offset}")
    assert aside.read_bytes() == before[os.path.relpath(seg, tmp_path)][last.offset:]
    with DirectoryStore(tmp_path) as store:  # it goes on from there, without the flag
        store.load()
        store.log_edit(record(6, edit_id="again"))
    assert reload(tmp_path)[0].version == 6


def _cut_at_boundary(root):
    seg = segments(root)[-1]
    os.truncate(seg, _last(seg).offset)


def _cut_to_zero(root):
    os.truncate(segments(root)[-1], 0)


def _delete_segment(root):
    with DirectoryStore(root) as store:  # a second segment, then the newest one goes
        store.load()
        store.snapshot()
        for v in (7, 8):
            store.log_edit(record(v))
    segments(root)[-1].unlink()


@pytest.mark.parametrize("damage", [_cut_at_boundary, _cut_to_zero, _delete_segment],
                         ids=["cut at a record boundary", "cut to 0 bytes", "deleted segment"])
def test_a_loss_the_journal_cannot_see_is_found_by_the_commit_marker(tmp_path, capsys, damage):
    build(tmp_path, 6)
    damage(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(StateCorruptError, match="COMMIT says version") as err:
        reload(tmp_path)
    assert "are missing" in str(err.value) and "--accept-state-loss" in str(err.value)
    assert main(["state", "verify", str(tmp_path)]) == 1
    assert "COMMIT says version" in capsys.readouterr().err
    assert _files(tmp_path) == before

    loaded, notes = reload(tmp_path, accept_loss=True)
    assert any("ACKNOWLEDGED EDITS LOST" in n for n in notes)
    assert reload(tmp_path)[0].version == loaded.version  # accepted once, the marker follows the journal


def test_a_state_without_a_marker_gets_one(tmp_path):
    exp = build(tmp_path, 4)
    (tmp_path / "COMMIT").unlink()  # a state written before the marker existed
    assert_matches(reload(tmp_path)[0], exp)
    _cut_at_boundary(tmp_path)
    with pytest.raises(StateCorruptError, match="COMMIT says version 4"):
        reload(tmp_path)
