"""Real uvicorn servers in subprocesses on 127.0.0.1, for the HTTP tests.

`tiny_server` serves a tiny random model (fast; for everything that does not need knowledge);
`real_server` serves the default model through `memoir serve` (tests marked `real`). Both are
session-scoped: tests share them and must not depend on edits made by other tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        if "MEMOIR_STATE_DIR" in (env or {}) and "MEMOIR_STORE" not in (env or {}):
            self.env["MEMOIR_STORE"] = "auto"  # a state directory given: not the tests' RAM default (conftest)
        # kept open for the server's whole life; closed and removed by stop()
        self.log = tempfile.NamedTemporaryFile(prefix="memoir-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> Server:
        self.proc = subprocess.Popen([sys.executable, *self.args], cwd=REPO, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server was not ready within {timeout} s:\n{self.output()}")

    def output(self, tail: int = 6000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def start_all(servers: list[Server], timeout: float = 180) -> list[Server]:
    """Start the processes together (replicas race to create the memory), then wait until all are ready."""
    for s in servers:
        s.proc = subprocess.Popen([sys.executable, *s.args], cwd=REPO, env=s.env, stdout=s.log,
                                  stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    for s in servers:
        while True:
            if s.proc.poll() is not None:
                raise RuntimeError(f"a server exited ({s.proc.returncode}):\n{s.output()}")
            try:
                if httpx.get(s.url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"a server was not ready within {timeout} s:\n{s.output()}")
            time.sleep(0.2)
    return servers


def uvicorn_args(target: str, port: int) -> list[str]:
    # --loop asyncio, as `memoir serve` runs (app/http/server.py), not uvloop where it is installed
    return ["-m", "uvicorn", target, "--factory", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--loop", "asyncio"]


# Torch threads of the test servers. On a CPU shared with other work (the test process, other
# jobs) torch's default of one thread per core can be many times slower than one thread: its
# OpenMP workers wait for each other while descheduled (measured on a busy 2-core machine:
# 94 s vs 12 s to build the default model's memory basis).
THREADS = os.environ.get("MEMOIR_TEST_THREADS", "1")


def tiny(env: dict[str, str] | None = None) -> Server:
    port = free_port()
    return Server(uvicorn_args("tests.support.tiny_server:app", port), {"MEMOIR_THREADS": THREADS, **(env or {})}, port)


@pytest.fixture(scope="session")
def tiny_server():
    server = tiny({"MEMOIR_EDIT_QUEUE_SIZE": "2", "MEMOIR_MAX_BODY_BYTES": "65536", "MEMOIR_MAX_NEW_TOKENS": "64",
                   "MEMOIR_MAX_PROMPT_TOKENS": "200"}).start(120)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_server():
    port = free_port()
    server = Server(["-m", "memoir_cli.main", "serve", "--port", str(port), "--threads", THREADS,
                     "--log-level", "warning"], port=port)
    yield server.start(600)
    server.stop()
