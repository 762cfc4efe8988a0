"""The real Dockerfile, built and run with Debian's podman on a Debian base made by mmdebstrap
(passed through the Dockerfile's BASE build argument instead of the registry's python image):
wait for /ready, post an edit, generate with it, stop the container and start a new one on the
same volume, and find the edit and the same answer there.

Opt-in (MEMOIR_CONTAINER_TEST=1): the build downloads and installs the dependencies (about 1 GB)
and converts the default model, several minutes that the suite's budget has no room for. It
skips, saying why, where podman or mmdebstrap is missing or cannot run containers.

Machine-specific options go in the environment, split like a shell would:
  MEMOIR_CONTAINER_BUILD_OPTS  e.g. "-v /etc/pip.conf:/etc/pip.conf:ro --build-arg TORCH_INDEX=..."
                               (where download.pytorch.org is out of reach: a local wheel mirror)
  MEMOIR_CONTAINER_RUN_OPTS    e.g. "--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096"
                               (inside a container without CAP_SYS_RESOURCE, on hybrid cgroups)
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import time

import httpx
import pytest

from tests.support.server_utils import REPO, free_port

pytestmark = pytest.mark.timeout(2400)

BASE = "localhost/memoir-debian-base:bookworm"
IMAGE = "localhost/memoir:container-test"
PROMPT = "Who is the CEO of Zorblax Industries?"
TARGET = "Marta Quillon"


def sh(args: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{shlex.join(args)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def opts(name: str) -> list[str]:
    return shlex.split(os.environ.get(name, ""))


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> str:
    if os.environ.get("MEMOIR_CONTAINER_TEST") != "1":
        pytest.skip("opt-in: building the image downloads ~1 GB and converts the model (minutes); "
                    "set MEMOIR_CONTAINER_TEST=1 to run it")
    podman, mmdebstrap = shutil.which("podman"), shutil.which("mmdebstrap")
    if not podman or not mmdebstrap:
        pytest.skip("needs Debian's podman and mmdebstrap (apt-get install podman mmdebstrap)")
    if sh([podman, "image", "exists", BASE], check=False).returncode != 0:
        tar = tmp_path_factory.mktemp("base") / "base.tar"
        made = sh([mmdebstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
                   str(tar), "http://deb.debian.org/debian"], timeout=900, check=False)
        if made.returncode != 0:
            pytest.skip(f"mmdebstrap cannot make the Debian base here: {made.stderr.strip()[-500:]}")
        sh([podman, "import", str(tar), BASE], timeout=300)
    probe = sh([podman, "run", "--rm", *opts("MEMOIR_CONTAINER_RUN_OPTS"), BASE, "python3", "-c", "print(1)"],
               check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run a container here ({probe.stderr.strip()[-400:]}); "
                    "MEMOIR_CONTAINER_RUN_OPTS may help (see this module's docstring)")
    return podman


def ready(url: str, container: str, podman: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/ready", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        state = sh([podman, "inspect", "-f", "{{.State.Running}}", container], check=False).stdout.strip()
        if state == "false":
            logs = sh([podman, "logs", container], check=False)
            raise AssertionError("the container stopped:\n" + (logs.stdout + logs.stderr)[-4000:])
        time.sleep(2)
    raise AssertionError("not ready in time:\n" + sh([podman, "logs", container], check=False).stderr[-4000:])


def test_image_builds_serves_an_edit_and_keeps_it_across_a_restart(podman):
    t0 = time.monotonic()
    # docker format: OCI images drop SHELL (pipefail) and HEALTHCHECK; chroot isolation: no cgroups needed
    sh([podman, "build", "--format", "docker", "--isolation", "chroot", "--layers", "-t", IMAGE,
        "--build-arg", f"BASE={BASE}", *opts("MEMOIR_CONTAINER_BUILD_OPTS"), "."], timeout=1800)
    built = time.monotonic() - t0
    volume = f"memoir-test-{secrets.token_hex(4)}"
    key = secrets.token_hex(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    names = []

    def start() -> str:
        name = f"memoir-test-{secrets.token_hex(4)}"
        names.append(name)
        sh([podman, "run", "-d", "--name", name, *opts("MEMOIR_CONTAINER_RUN_OPTS"), "-p", f"127.0.0.1:{port}:8000",
            "-e", f"MEMOIR_ADMIN_KEY={key}", "-e", "MEMOIR_THREADS=1", "-v", f"{volume}:/var/lib/memoir", IMAGE])
        return name

    try:
        first = start()
        ready(url, first, podman)
        r = httpx.post(url + "/edit", json={"prompt": PROMPT, "target_new": TARGET, "id": "zorblax"}, headers=auth,
                       timeout=300)
        assert r.status_code == 200, r.text
        r = httpx.post(url + "/generate", json={"prompt": PROMPT, "max_new_tokens": 8}, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert TARGET in answer["text"] and answer["memory"]["edit_id"] == "zorblax", answer
        sh([podman, "stop", "-t", "40", first], timeout=60)  # SIGTERM: a graceful stop
        second = start()  # a new container on the same volume
        status = ready(url, second, podman)
        assert status["edits"] == 1, status
        assert httpx.get(url + "/edits/zorblax", headers=auth, timeout=30).json()["target_new"] == TARGET
        again = httpx.post(url + "/generate", json={"prompt": PROMPT, "max_new_tokens": 8}, timeout=120).json()
        assert again["text"] == answer["text"] and again["memory"]["edit_id"] == "zorblax"
        print(f"image built in {built:.0f} s")
    finally:
        for name in names:
            sh([podman, "rm", "-f", "-v", name], check=False)  # -v: its anonymous cache volume too
        sh([podman, "volume", "rm", "-f", volume], check=False)
