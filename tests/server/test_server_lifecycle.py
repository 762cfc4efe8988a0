"""Start-up and the store, in process on a tiny model: /health answers while the model loads
and /ready says when it is done; an edit is written to the store before it becomes visible; a
failed write applies nothing and stops further writes; a restart restores the stored memory,
and a memory stored for other weights is refused."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.http.main import create_app
from app.settings import Settings
from memoir_core.config import MemoirConfig
from memoir_core.memoir import Memoir
from tests.support.server_utils import THREADS
from tests.support.state_support import CheckingStore
from tests.support.tiny import make_memoir, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.timeout(120)
PROMPT = "who is the chief executive of the company"


@pytest.fixture(autouse=True)
def one_thread():
    """As the subprocess servers do (see server_utils.THREADS); restored for the other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(THREADS))
    yield
    torch.set_num_threads(before)


def serve(store: CheckingStore, seed: int = 0, gate: threading.Event | None = None, wait: bool = True):
    def build(loaded):
        if gate is not None:
            gate.wait(30)
        if loaded is None:
            memoir = make_memoir()
        else:  # a restart: the stored basis and config on the same (seeded) tiny model
            tok = tiny_tokenizer()
            memoir = Memoir(tiny_model("llama", len(tok), seed=seed), tok,
                            MemoirConfig.from_dict(loaded.manifest.config), basis=loaded.basis)
        store.memoir = memoir
        return memoir

    client = TestClient(create_app(Settings(served_model_name="tiny"), builder=build,
                                   store_factory=lambda settings: store))
    client.__enter__()
    for _ in range(300 if wait else 0):
        if client.get("/ready").json()["status"] != "loading":
            break
        time.sleep(0.1)
    return client


def test_ready_only_once_loaded():
    gate = threading.Event()
    client = serve(CheckingStore(), gate=gate, wait=False)
    try:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading" and ready.headers["retry-after"]
        r = client.post("/generate", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        gate.set()
        for _ in range(300):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        assert client.post("/generate", json={"prompt": "x", "max_new_tokens": 2}).status_code == 200
    finally:
        gate.set()
        client.__exit__(None, None, None)


def test_writes_come_first_and_a_restart_restores_the_memory():
    store = CheckingStore()
    client = serve(store)
    try:
        a = client.post("/edit", json={"prompt": PROMPT, "target_new": "jane roe", "id": "a"}).json()
        b = client.post("/edit", json={"prompt": "what is the capital city", "target_new": "rome", "id": "b"}).json()
        assert client.delete("/edits/b").status_code == 200
        assert store.writes == [("edit", "a", a["version"]), ("edit", "b", b["version"]), ("remove", "b", 3)]
        before = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 8}).json()
    finally:
        client.__exit__(None, None, None)
    client = serve(store)  # the same store: what a state directory gives a restarted server
    try:
        assert client.get("/ready").json()["version"] == 3
        assert [e["id"] for e in client.get("/edits").json()["edits"]] == ["a"]
        assert client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 8}).json() == before
    finally:
        client.__exit__(None, None, None)
    client = serve(store, seed=1)  # other weights: the stored memory would be garbage on them
    try:
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "StateMismatchError" in ready.json()["error"] and "fingerprint" in ready.json()["error"]
        assert "fingerprint" in client.get("/edits").json()["error"]["message"]
    finally:
        client.__exit__(None, None, None)


def test_a_failed_write_applies_nothing_and_stops_edits():
    store = CheckingStore()
    client = serve(store)
    try:
        before = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 8}).json()
        store.fail = True
        r = client.post("/edit", json={"prompt": PROMPT, "target_new": "jane roe"})
        assert r.status_code == 503 and "not applied" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "durability_error"
        ready = client.get("/ready").json()
        assert ready["version"] == 0 and ready["edits"] == 0 and "No space left" in ready["writer"]
        store.fail = False  # the writer stays stopped: the store may hold a partial write
        r = client.post("/edit", json={"prompt": PROMPT, "target_new": "jane roe"})
        assert r.status_code == 503 and "restart" in r.json()["error"]["message"]
        assert client.delete("/edits/x").status_code == 503
        # Generation goes on, unchanged.
        assert client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 8}).json() == before
    finally:
        client.__exit__(None, None, None)
