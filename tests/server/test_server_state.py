"""The service on a state directory, in process on a tiny model: a restart restores the memory
(same registry, versions and greedy outputs, also after a DELETE), an edit id is applied once
across restarts, and a state the server cannot use (locked, corrupt, made for other weights or
another layout) stops the start with a message that says what is wrong.

The same through real server processes (exit codes, a full disk) is in test_server_state_proc.py;
kill -9 in test_server_crash.py.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.http.main import create_app
from app.service.runtime import stored_config
from app.service.stores import default_state_dir, open_store
from app.settings import Settings
from memoir_core.errors import StateError
from memoir_core.store import DirectoryStore
from tests.support.server_utils import THREADS
from tests.support.tiny_server import builder

pytestmark = pytest.mark.timeout(180)

FACTS = {
    "ceo": ("who is the chief executive of the company", "jane roe"),
    "capital": ("what is the capital city of the country", "lisbon"),
    "fox": ("the quick brown fox jumps over the", "carol"),
}
PROBES = [p for p, _ in FACTS.values()] + ["numbers one two three", "paris london berlin"]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(THREADS))
    yield
    torch.set_num_threads(before)


class Served:
    """A TestClient on a create_app whose state stops the start by calling on_fatal (recorded here)."""

    def __init__(self, state: Path, seed: int = 0, **settings):
        self.fatal: list[str] = []
        values = {"served_model_name": "tiny", "store": "dir", "state_dir": state, "snapshot_min_bytes": 0,
                  **settings}
        app = create_app(Settings(**values), builder=builder(seed), on_fatal=self.fatal.append)
        self.runtime = app.state.runtime
        self.client = TestClient(app)

    def __enter__(self) -> "Served":
        self.client.__enter__()
        deadline = time.monotonic() + 60
        while self.runtime.status == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.client.__exit__(*exc)

    def outputs(self) -> list[dict]:
        return [self.client.post("/generate", json={"prompt": p, "max_new_tokens": 6}).json() for p in PROBES]

    def edits(self) -> list[tuple[str, int, str]]:
        return [(e["id"], e["version"], e["target_new"]) for e in self.client.get("/edits").json()["edits"]]


def edit(client, key: str, edit_id: str | None = None, target: str | None = None) -> dict:
    prompt, default = FACTS[key]
    body = {"prompt": prompt, "target_new": target or default, **({"id": edit_id} if edit_id else {})}
    r = client.post("/edit", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_restart_restores_the_memory_and_an_edit_id_is_applied_once(tmp_path):
    with Served(tmp_path) as s:
        assert s.client.get("/ready").json()["version"] == 0
        edit(s.client, "ceo", "ceo")
        edit(s.client, "capital", "capital")
        edit(s.client, "fox")  # no id: the server names it
        assert s.client.delete("/edits/capital").status_code == 200
        before, listed, version = s.outputs(), s.edits(), s.client.get("/ready").json()["version"]
        assert version == 4 and [e[0] for e in listed][0] == "ceo" and len(listed) == 2
        assert before[0]["text"].lstrip().startswith("jane roe") and before[0]["memory"]["edit_id"] == "ceo"
        assert not s.runtime.store.notes

    with Served(tmp_path) as s:
        assert s.runtime.status == "ready", s.runtime.error
        assert s.client.get("/ready").json()["version"] == version
        assert s.edits() == listed
        assert s.outputs() == before  # text, memory version and routing: the same memory
        # An edit id already applied (before the restart) is not trained again.
        again = edit(s.client, "ceo", "ceo")
        assert again["edits"][0]["replayed"] and again["version"] == version
        r = s.client.post("/edit", json={"prompt": FACTS["ceo"][0], "target_new": "john doe", "id": "ceo"})
        assert r.status_code == 409, r.text
        # A deleted id is free again: it trains anew.
        back = edit(s.client, "capital", "capital")
        assert not back["edits"][0]["replayed"] and back["version"] == version + 1
        after = s.outputs()

    with Served(tmp_path) as s:
        assert s.client.get("/ready").json()["version"] == version + 1
        assert s.outputs() == after
        assert edit(s.client, "capital", "capital")["edits"][0]["replayed"]


def test_a_second_server_on_the_same_directory_stops_at_the_lock(tmp_path):
    with Served(tmp_path) as first:
        with Served(tmp_path) as second:
            assert second.runtime.status == "failed"
            (message,) = second.fatal
            assert "StateLockedError" in message and f"in use by process {os.getpid()}" in message
            assert second.client.get("/ready").status_code == 503
        assert first.client.get("/ready").status_code == 200  # the holder goes on
        edit(first.client, "ceo", "ceo")


def make_state(path: Path) -> None:
    with Served(path) as s:
        edit(s.client, "ceo", "ceo")
        edit(s.client, "capital", "capital")


def test_a_state_made_for_other_weights_stops_the_start(tmp_path):
    make_state(tmp_path)
    with Served(tmp_path, seed=1) as s:
        assert s.runtime.status == "failed"
        (message,) = s.fatal
        assert "StateMismatchError" in message and "fingerprint" in message and str(tmp_path) in message
        r = s.client.get("/ready")
        assert r.status_code == 503 and "fingerprint" in r.json()["error"]
    with Served(tmp_path) as s:  # the lock was let go, and nothing was changed
        assert s.runtime.status == "ready" and [e[0] for e in s.edits()] == ["ceo", "capital"]


def test_a_config_that_contradicts_the_stored_layout_stops_the_start(tmp_path):
    make_state(tmp_path)
    with Served(tmp_path, config={"k": 16}) as s:
        (message,) = s.fatal
        assert "MEMOIR_CONFIG contradicts" in message and "k: the state has 32, MEMOIR_CONFIG 16" in message
    with Served(tmp_path, config={"k": 32, "tau": 0.7}) as s:  # the same layout: fine
        assert s.runtime.status == "ready"
        manifest = s.runtime.store.manifest()
    # The default builder keeps the stored layout and takes MEMOIR_CONFIG's other fields.
    config = stored_config(manifest, {"tau": 0.7, "layer": None})
    assert (config.tau, config.k, config.layer, config.lr) == (0.7, 32, manifest.layer, 0.5)
    # a memory written before `pool` existed keeps routing on plain means under today's default
    old = dataclasses.replace(manifest, config={n: v for n, v in manifest.config.items() if n != "pool"})
    assert stored_config(old, {}).pool == "mean" and stored_config(manifest, {}).pool == manifest.config["pool"]


def test_a_corrupt_state_stops_the_start(tmp_path):
    make_state(tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"k": 32', '"k": 31'))
    with Served(tmp_path) as s:
        (message,) = s.fatal
        assert "StateCorruptError" in message and "manifest.json" in message


def test_the_default_state_directory_is_per_model_under_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_state_dir(Settings(model=None)) == tmp_path / "memoir/state/smollm2-135m-instruct"
    folder = tmp_path / "my model"
    folder.mkdir()
    other = default_state_dir(Settings(model=str(folder)))
    assert other.parent == tmp_path / "memoir/state" and other.name.startswith("my--model-")
    assert Settings(model=None, state_dir=tmp_path / "x").state_dir == tmp_path / "x"
    store = open_store(Settings(model=str(folder), store="auto"))
    try:
        assert isinstance(store, DirectoryStore) and Path(store.root) == other and other.is_dir()
    finally:
        store.close()
    assert type(open_store(Settings(store="memory"))).__name__ == "InMemoryStore"
    with pytest.raises(StateError, match="MEMOIR_STORE=memory .* contradicts MEMOIR_STATE_DIR"):
        open_store(Settings(store="memory", state_dir=tmp_path))
