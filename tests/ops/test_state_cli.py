"""`memoir state inspect|verify|export|import`."""

from __future__ import annotations

import json
import os
import tarfile

import torch

from memoir_cli.main import main
from memoir_core.audit import AuditEvent
from memoir_core.store import DirectoryStore, journal, snapshot
from memoir_core.store.audit_file import FileAudit
from tests.store.test_state_store import _flip, build, reload, segments
from tests.support.state_support import assert_matches, record


def test_inspect_shows_the_state(tmp_path, capsys):
    exp = build(tmp_path, 25, snapshot_min_bytes=4000)
    assert main(["state", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny-test" in out and f"version          {exp.version}" in out and f"live edits       {len(exp.live)}" in out
    assert main(["state", "inspect", "--json", str(tmp_path)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["version"] == exp.version and s["live_edits"] == len(exp.live) and s["locked_by"] is None
    assert s["snapshot"]["version"] > 0 and s["last_edits"][-1]["id"] == list(exp.live)[-1]


def test_inspect_and_verify_work_beside_a_running_store(tmp_path, capsys):
    build(tmp_path, 5)
    with DirectoryStore(tmp_path) as store:
        store.load()
        assert main(["state", "inspect", "--json", str(tmp_path)]) == 0
        assert json.loads(capsys.readouterr().out)["locked_by"] == os.getpid()
        assert main(["state", "verify", str(tmp_path)]) == 0


def test_verify_exit_codes(tmp_path, capsys):
    build(tmp_path, 6)
    assert main(["state", "verify", str(tmp_path)]) == 0
    assert "ok:" in capsys.readouterr().out
    with open(segments(tmp_path)[-1], "ab") as f:  # a torn tail is a warning: start-up cuts it
        f.write(journal.encode_edit(record(7))[:100])
    assert main(["state", "verify", str(tmp_path)]) == 0
    assert "warning" in capsys.readouterr().out
    buf = bytearray(segments(tmp_path)[-1].read_bytes())
    _flip(segments(tmp_path)[-1], journal.scan(buf).entries[2].payload[0] + 30)
    assert main(["state", "verify", str(tmp_path)]) == 1
    assert "damaged" in capsys.readouterr().err
    assert main(["state", "verify", str(tmp_path / "nothing")]) == 1


def test_verify_catches_an_accumulator_that_disagrees_with_the_deltas(tmp_path, capsys, monkeypatch):
    build(tmp_path, 6)
    with DirectoryStore(tmp_path) as store:
        loaded = store.load()
        wrong = snapshot.accumulate(loaded.edits, 8, 64)
        wrong[0, int(loaded.edits[0].idx[0])] += 1
        monkeypatch.setattr(snapshot, "accumulate", lambda *a, **k: wrong)
        store.snapshot()  # stores an accumulator that is not the sum of the deltas
    monkeypatch.undo()
    assert main(["state", "verify", str(tmp_path)]) == 1
    assert "accumulator" in capsys.readouterr().err


def test_export_import_round_trip(tmp_path, capsys):
    src = tmp_path / "src"
    exp = build(src, 40, snapshot_min_bytes=5000)
    FileAudit(str(src)).append(AuditEvent("rollback", "e1", "ops", answer_before="a", answer_after="b"))
    with DirectoryStore(src) as store:  # exported while a store holds the directory
        store.load()
        assert main(["state", "export", str(src), str(tmp_path / "state.tar.gz")]) == 0
    with tarfile.open(tmp_path / "state.tar.gz") as tar:
        names = tar.getnames()
    assert "manifest.json" in names and not any(n.endswith(".wal") for n in names)
    assert main(["state", "import", str(tmp_path / "state.tar.gz"), str(tmp_path / "dst")]) == 0
    loaded, _ = reload(tmp_path / "dst")
    assert_matches(loaded, exp)
    (event,) = FileAudit(str(tmp_path / "dst")).events()  # the audit trail went along
    assert (event.kind, event.answer_before, event.answer_after) == ("rollback", "a", "b")
    assert torch.equal(loaded.basis.background_mean, reload(src)[0].basis.background_mean)
    capsys.readouterr()
    assert main(["state", "import", str(tmp_path / "state.tar.gz"), str(tmp_path / "dst")]) == 1
    assert "not an empty directory" in capsys.readouterr().err


def test_import_refuses_foreign_archives(tmp_path, capsys):
    evil = tmp_path / "evil.tar"
    (tmp_path / "x").write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(tmp_path / "x", arcname="../escape")
    assert main(["state", "import", str(evil), str(tmp_path / "dst")]) == 1
    assert "not a memoir state export" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists() and not (tmp_path.parent / "escape").exists()
