"""A server process that runs out of file descriptors (idle sockets under a low open-files
limit) pauses edits with a 503 and takes them again once the sockets close, without a
restart; asyncio's accept errors meanwhile are logged once per interval, not per event."""

from __future__ import annotations

import os
import resource
import socket
import time

import httpx
import pytest

from .server_utils import tiny

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
