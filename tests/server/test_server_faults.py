"""A server process that runs out of file descriptors (idle sockets under a low open-files
limit) pauses edits with a 503 and takes them again once the sockets close, without a
restart; asyncio's accept errors meanwhile are logged once per interval, not per event. A
model that cannot load ends the process, non-zero, in seconds, saying why."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.server_utils import REPO, free_port, tiny

pytestmark = pytest.mark.timeout(240)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_running_out_of_file_descriptors_heals_without_a_restart(tmp_path):
    server = tiny({"MEMOIR_STORE": "dir", "MEMOIR_STATE_DIR": str(tmp_path / "state"),
                   "MEMOIR_LOG_FORMAT": "text"}).start(180)
    pid = server.proc.pid
    idle: list[socket.socket] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/ready").status_code == 200  # this connection is accepted before the limit
            limit = _fds(pid) + 16
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
            for _ in range(40):  # idle clients take every descriptor left; the rest wait unaccepted
                idle.append(socket.create_connection(("127.0.0.1", server.port)))
            deadline = time.monotonic() + 20
            while _fds(pid) < limit and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _fds(pid) >= limit

            body = {"prompt": "who is the chief executive of the company", "target_new": "jane roe", "id": "e1"}
            r = c.post("/edit", json=body)  # the first record needs a new journal file: EMFILE
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "durability_transient" and "Too many open files" in r.text
            health = c.get("/health").json()
            assert health["writer"] == "paused" and health["restart_helps"] is False, health
            paused = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("memoir:writer_paused ")]
            assert paused and float(paused[0].split()[1]) == 1, paused
            g = c.post("/generate", json={"prompt": "who is the chief", "max_new_tokens": 4})
            assert g.status_code == 200

            for s in idle:
                s.close()
            idle.clear()
            deadline = time.monotonic() + 40
            while (r := c.post("/edit", json=body)).status_code != 200 and time.monotonic() < deadline:
                assert r.json()["error"]["code"] == "durability_transient", r.text
                time.sleep(0.5)
            assert r.status_code == 200 and not r.json()["edits"][0]["replayed"], r.text
            assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").status_code == 200
        assert server.proc.poll() is None and server.proc.pid == pid  # never restarted
        out = server.output(200_000)
        assert 1 <= out.count("socket.accept() out of system resource") <= 6, out[-3000:]
        assert out.count("Too many open files; edits are paused") <= 6
    finally:
        for s in idle:
            s.close()
        server.stop()


@pytest.mark.parametrize("model,words", [
    ("/no/such/dir", "model '/no/such/dir': no such folder"),
    ("NOT_AN_LM", "is not a causal LM (its architectures: BertForMaskedLM)"),
    ("acme/no-such-model", "not in the local Hugging Face cache, and the hub is offline (HF_HUB_OFFLINE=1): "
                           "prepare it on a machine with network: `huggingface-cli download acme/no-such-model`"),
])
def test_a_model_that_cannot_load_exits_non_zero_within_10_s_saying_why(tmp_path, model, words):
    if model == "NOT_AN_LM":
        model = str(tmp_path / "bert")
        os.mkdir(model)
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump({"architectures": ["BertForMaskedLM"], "model_type": "bert"}, f)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MEMOIR_THREADS": "1",
           "MEMOIR_STORE": "auto"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "memoir_cli.main", "serve", "--model", model, "--port",
                           str(free_port()), "--state-dir", str(tmp_path / "state"), "--log-format", "text"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "memoir serve: cannot start: ModelLoadError: model " in proc.stderr, proc.stderr[-3000:]
    assert words in proc.stderr and "CRITICAL" in proc.stderr, proc.stderr[-3000:]
    assert seconds < 10, f"{seconds:.1f} s"
