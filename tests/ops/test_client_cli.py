"""`memoir client` against a real server process on a tiny model: add, preview, list, show,
import with progress, export, delete; URL and admin key from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.console_utils import ADMIN
from tests.support.server_utils import REPO

pytestmark = pytest.mark.timeout(180)


def memoir(server, *args, key: str | None = ADMIN, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEMOIR_URL": server.url, "PYTHONPATH": str(REPO)}
    env.pop("MEMOIR_ADMIN_KEY", None)
    if key is not None:
        env["MEMOIR_ADMIN_KEY"] = key
    return subprocess.run([sys.executable, "-m", "memoir_cli.main", "client", *args], cwd=REPO, env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_client_commands(console_server, tmp_path):
    s = console_server
    r = memoir(s, "preview", "who is the head of the lab", "carol", "-p", "the lab is headed by")
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "before:" in r.stdout and "blast radius:" in r.stdout
    r = memoir(s, "--json", "add", "who is the head of the lab", "carol", "--id", "cli-lab", "-m", "ticket=T-7")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["edits"][0]["id"] == "cli-lab"
    r = memoir(s, "list", "--search", "head of the lab")
    assert r.returncode == 0 and "cli-lab" in r.stdout and "'carol'" in r.stdout
    shown = json.loads(memoir(s, "show", "cli-lab").stdout)
    assert shown["metadata"] == {"ticket": "T-7"} and shown["author"] == "ops"

    csv = tmp_path / "edits.csv"
    csv.write_text("prompt,target_new,id\nwho owns the boat,dave,cli-boat\n,empty,cli-bad\nwho owns the car,erin,"
                   "cli-car\n")
    r = memoir(s, "import", str(csv), "--chunk-bytes", "40")  # one piece per row, line numbers kept
    assert r.returncode == 1  # a row was refused
    assert "line 3:" in r.stderr and "2 applied, 1 rows refused" in r.stdout
    assert "import" in r.stderr and "row" in r.stderr  # the progress bar
    assert "HTTP Request" not in r.stderr  # httpx's line per request would drown it
    r = memoir(s, "import", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"memoir client import: cannot read {tmp_path / 'missing.csv'}: No such file or directory"]

    out = tmp_path / "export.jsonl"
    r = memoir(s, "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = {e["id"]: e for e in map(json.loads, out.read_text().splitlines())}
    assert rows["cli-boat"] == {"id": "cli-boat", "prompt": "who owns the boat", "target_new": "dave"}
    assert rows["cli-lab"]["metadata"] == {"ticket": "T-7"}
    # an export imports again: same ids and content are idempotent retries
    r = memoir(s, "--json", "import", "-", stdin=out.read_text())
    assert r.returncode == 0, r.stderr
    assert all(a["replayed"] for a in json.loads(r.stdout)["applied"])

    r = memoir(s, "delete", "cli-boat")
    assert r.returncode == 0 and "rolled back cli-boat" in r.stdout
    r = memoir(s, "show", "cli-boat")
    assert r.returncode == 1 and "404" in r.stderr
    r = memoir(s, "list", key=None)
    assert r.returncode == 1 and "401" in r.stderr

    # the same options after the subcommand; an edit of the same prompt says what it replaced
    r = memoir(s, "add", "who keeps the cli ledger", "gina", "--id", "cli-ledger-1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["edits"][0]["supersedes"] is None, r.stderr
    r = memoir(s, "add", "Who keeps the CLI ledger", "hank", "--id", "cli-ledger-2")
    assert r.returncode == 0 and "supersedes cli-ledger-1" in r.stdout, r.stderr
    r = memoir(s, "list", "--search", "cli ledger", "--json", "--url", s.url)
    assert [e["supersedes"] for e in json.loads(r.stdout)] == ["cli-ledger-1"]
    r = memoir(s, "list", "--search", "cli ledger")
    assert "(supersedes cli-ledger-1)" in r.stdout


def test_a_reader_that_leaves_early_gets_no_traceback(console_server):
    assert memoir(console_server, "add", "who tends the cli pipe", "ivan", "--id", "cli-pipe").returncode == 0
    env = {**os.environ, "MEMOIR_URL": console_server.url, "PYTHONPATH": str(REPO), "MEMOIR_ADMIN_KEY": ADMIN}
    p = subprocess.Popen([sys.executable, "-m", "memoir_cli.main", "client", "export"], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # as `| head` does once it has its lines: every write now fails with EPIPE
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
