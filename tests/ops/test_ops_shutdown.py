"""SIGTERM: the server stops accepting, finishes the requests in flight (a stream, an edit that is
training), closes the store and exits 0; a restart on the same state directory has every
acknowledged edit. With less time than the requests need it still exits 0 within the bound. And
without an admin key it refuses to listen beyond 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.support.server_utils import REPO, THREADS, Server, free_port

pytestmark = pytest.mark.timeout(240)

ADMIN = "admin-key-" + "k" * 20
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def ops_server(state_dir, **env) -> Server:
    port = free_port()
    return Server(["-m", "tests.support.ops_server"], {
        "MEMOIR_PORT": str(port), "MEMOIR_THREADS": THREADS, "MEMOIR_STATE_DIR": str(state_dir),
        "MEMOIR_ADMIN_KEY": ADMIN, "MEMOIR_MAX_NEW_TOKENS": "200", **env}, port)


def gauge(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def stream_tokens(url: str, started: threading.Event) -> list[dict]:
    events = []
    with httpx.stream("POST", url + "/generate", timeout=120, json={
            "prompt": "numbers one two three", "max_new_tokens": 200, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()
    return events


def test_sigterm_finishes_the_stream_and_the_edit_then_exits_0(tmp_path):
    # Every edit trains 300 steps (no early stop): long enough to be in flight at the signal; a
    # stream decodes one token per engine turn, between two steps of the edit.
    state = tmp_path / "state"
    server = ops_server(state, MEMOIR_TINY_CONFIG=json.dumps({"stop_loss": -1.0, "max_steps": 300}),
                        MEMOIR_SHUTDOWN_TIMEOUT="60").start(180)
    url = server.url
    try:
        first = httpx.post(url + "/edit", headers=AS_ADMIN, timeout=120, json={
            "prompt": "who is the chief executive of the company", "target_new": "jane roe", "id": "before"})
        assert first.status_code == 200, first.text
        edit_thread, edit = in_thread(lambda: httpx.post(url + "/edit", headers=AS_ADMIN, timeout=120, json={
            "prompt": "what is the capital city of the country", "target_new": "lisbon", "id": "in-flight"}))
        deadline = time.monotonic() + 30
        while gauge(url, "memoir:edit_queue_requests") < 1:
            assert time.monotonic() < deadline, "the edit never started"
            time.sleep(0.05)
        started = threading.Event()
        stream_thread, stream = in_thread(lambda: stream_tokens(url, started))
        assert started.wait(30), stream
        server.proc.send_signal(signal.SIGTERM)

        # It stops accepting at once, while both requests go on.
        refused = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not refused:
            try:
                httpx.get(url + "/health", timeout=1)
                time.sleep(0.05)
            except httpx.HTTPError:
                refused = True
        assert refused, "new connections were still accepted after SIGTERM"
        assert stream_thread.is_alive() or edit_thread.is_alive(), "nothing was left in flight to wait for"

        stream_thread.join(120)
        edit_thread.join(120)
        assert "error" not in stream, stream.get("error")
        events = stream["value"]
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["finish_reason"] == "length" and last["usage"]["completion_tokens"] == 200
        assert "error" not in edit, edit.get("error")
        assert edit["value"].status_code == 200, edit["value"].text
        acknowledged = edit["value"].json()["edits"][0]
        assert acknowledged["id"] == "in-flight" and acknowledged["steps"] == 300 and acknowledged["version"] == 2
        assert server.proc.wait(60) == 0, server.output()
        log = server.output(tail=200_000)
        assert '"event": "shutdown"' in log and "timeout graceful shutdown exceeded" not in log
    finally:
        server.stop()

    # The state directory has both edits; the stop left nothing to repair.
    again = ops_server(state, MEMOIR_SHUTDOWN_TIMEOUT="3", MEMOIR_MAX_EDIT_STEPS="100000",
                       MEMOIR_MAX_EDIT_SECONDS="600").start(180)
    try:
        listing = httpx.get(again.url + "/edits", headers=AS_ADMIN, timeout=30).json()
        assert [e["id"] for e in listing["edits"]] == ["before", "in-flight"] and listing["version"] == 2
        stored = listing["edits"][1]
        assert (stored["steps"], stored["version"]) == (acknowledged["steps"], acknowledged["version"])
        assert stored["final_loss"] == pytest.approx(acknowledged["final_loss"])

        # Bounded: an edit that would train for minutes does not hold the stop up beyond the
        # timeout (3 s for the requests, then what is left, at least 1 s, for the engine).
        in_thread(lambda: httpx.post(again.url + "/edit", headers=AS_ADMIN, timeout=120, json={
            "prompt": "numbers one two three four", "target_new": "five"}))
        deadline = time.monotonic() + 30
        while gauge(again.url, "memoir:edit_queue_requests") < 1:
            assert time.monotonic() < deadline, "the edit never started"
            time.sleep(0.05)
        t0 = time.monotonic()
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(30) == 0, again.output()
        assert time.monotonic() - t0 < 15
        log = again.output(tail=200_000)
        assert "timeout graceful shutdown exceeded" in log
        assert "was cancelled" in log and "CancelledError" not in log and "Traceback" not in log, log[-4000:]
    finally:
        again.stop()


def test_no_admin_key_no_listening_beyond_loopback():
    cases = [
        ([sys.executable, "-m", "memoir_cli.main", "serve", "--host", "0.0.0.0", "--port", str(free_port())], {}),
        ([sys.executable, "-m", "memoir_cli.main", "serve"], {"MEMOIR_HOST": "::", "MEMOIR_API_KEY": ADMIN}),
    ]
    for args, env in cases:
        env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        for name in ("MEMOIR_ADMIN_KEY", "MEMOIR_ADMIN_KEYS", "MEMOIR_ALLOW_INSECURE"):
            env.pop(name, None)
        p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
        assert "refusing to listen on" in p.stderr and "MEMOIR_ADMIN_KEY" in p.stderr
        assert "--allow-insecure" in p.stderr
