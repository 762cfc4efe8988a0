"""kill -9 against the real server: edits (and some rollbacks) are sent continuously, the
server is SIGKILLed at a random moment, restarted on the same state directory, and checked.

Each round picks how to choose the moment: at random, while an edit trains, right after an
edit was acknowledged, or while a background snapshot is being written (the test watches the
state directory for the snapshot's temporary folder; snapshots are made after every edit).
After the kill, with the server down, the directory is verified as an operator would
(`memoir state verify`: every checksum, a full replay, W_m's accumulator against the sum of the
live deltas) and compared with what the client was told:
  - every acknowledged edit is live, every acknowledged rollback is gone, and nothing else is
    there but the one request in flight at the kill (which may or may not have landed);
  - every live edit has its registry entry, its mask and its delta (or none of them: an edit
    with a missing part would fail the replay or the accumulator check);
then the next round's server must start (no failed restart) and serve exactly that memory:
GET /edits and the memory version equal the directory's, and greedy answers seen at the last
memory version before the kill come back the same (they answer as trained).

MEMOIR_KILL_ROUNDS (20) rounds on the tiny model; MEMOIR_KILL_ROUNDS_REAL (4) on the default model.
The tiny model's servers are forked from a process that has done the imports
(tests/support/forkserver.py): a restart then takes about 2 s instead of about 15 s on a busy
2-core machine. The default model's are started as `memoir serve` processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from memoir_core.store.layout import SNAPSHOTS, TMP_MARK
from memoir_core.store.portable import verify
from tests.support.server_utils import REPO, THREADS, Server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROUNDS = int(os.environ.get("MEMOIR_KILL_ROUNDS", "20"))
REAL_ROUNDS = int(os.environ.get("MEMOIR_KILL_ROUNDS_REAL", "4"))
STRATEGIES = ("mid-snapshot", "mid-edit", "random", "after-ack")  # the first rounds take each in turn
SNAPSHOT_OFTEN = {"MEMOIR_SNAPSHOT_MIN_BYTES": "0", "MEMOIR_SNAPSHOT_RATIO": "0"}  # after every edit

# Invented facts, made up from parts (one fact per edit id; no two prompts alike).
FIRST = ["Mirela", "Odessa", "Tarun", "Ilse", "Bram", "Quilla", "Ferro", "Anouk", "Zeno", "Livia", "Oskar", "Nadia"]
LAST = ["Quandt", "Prynne", "Vasker", "Holloway", "Drummet", "Kessing", "Ambrose", "Tolliver", "Renwick", "Saar"]
ORGS = ["Zorblax", "Quennary", "Velloran", "Tressik", "Mardune", "Olvanta", "Brisco", "Kelderan", "Pommery",
        "Yastrel", "Gundova", "Ferrisk", "Altamar", "Nordquist", "Sablon", "Ivaran"]
KINDS = ["Industries", "Foods", "Institute", "Labs", "Shipping", "Bank", "Museum", "Records"]
ROLES = ["Who is the CEO of {}?", "Who founded {}?", "Who chairs the board of {}?", "Who is the director of {}?"]


def fact(rng: random.Random, n: int) -> tuple[str, str]:
    org = f"{rng.choice(ORGS)} {rng.choice(KINDS)} {n}"
    return rng.choice(ROLES).format(org), f"{rng.choice(FIRST)} {rng.choice(LAST)}"


@dataclass
class Ledger:
    """What the client was told, across rounds."""

    live: dict[str, tuple[str, str]] = field(default_factory=dict)  # acknowledged edits, not rolled back
    removed: set[str] = field(default_factory=set)  # acknowledged rollbacks
    pending: tuple | None = None  # the request in flight at the kill: ("edit", id, prompt, target) | ("delete", id)
    acks: int = 0
    deletes: int = 0
    next_id: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # the prober reads `live` meanwhile


class Traffic:
    """A client thread that sends edits (and a rollback now and then) one after another, and a
    prober thread that asks greedy questions and notes the memory version each answer saw."""

    def __init__(self, url: str, ledger: Ledger, rng: random.Random, new_tokens: int):
        self.url, self.ledger, self.rng, self.new_tokens = url, ledger, rng, new_tokens
        self.stop = threading.Event()
        self.acked = threading.Event()  # set at each acknowledgement
        self.in_flight_since: float | None = None  # an edit request is training since then
        self.probes: list[tuple[int, str, dict]] = []  # (memory version, prompt, answer)
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._edits, daemon=True),
                        threading.Thread(target=self._probe, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _edits(self) -> None:
        lg = self.ledger
        with httpx.Client(base_url=self.url, timeout=600) as c:
            while not self.stop.is_set():
                if lg.live and self.rng.random() < 0.12:
                    edit_id = self.rng.choice(sorted(lg.live))
                    lg.pending = ("delete", edit_id)
                    try:
                        r = c.delete(f"/edits/{edit_id}")
                    except httpx.HTTPError:
                        return  # killed: pending stays for the check
                    if r.status_code != 200:
                        self.errors.append(f"DELETE {edit_id}: {r.status_code} {r.text}")
                        return
                    with lg.lock:
                        lg.live.pop(edit_id)
                    lg.removed.add(edit_id)
                    lg.deletes += 1
                else:
                    edit_id = f"k{lg.next_id}"
                    prompt, target = fact(self.rng, lg.next_id)
                    lg.next_id += 1
                    lg.pending = ("edit", edit_id, prompt, target)
                    self.in_flight_since = time.monotonic()
                    try:
                        r = c.post("/edit", json={"prompt": prompt, "target_new": target, "id": edit_id})
                    except httpx.HTTPError:
                        return
                    self.in_flight_since = None
                    if r.status_code != 200:
                        self.errors.append(f"POST /edit {edit_id}: {r.status_code} {r.text}")
                        return
                    (out,) = r.json()["edits"]
                    with lg.lock:
                        if out["supersedes"]:
                            lg.live.pop(out["supersedes"], None)
                        lg.live[edit_id] = (prompt, target)
                    lg.acks += 1
                lg.pending = None
                self.acked.set()

    def _probe(self) -> None:
        with httpx.Client(base_url=self.url, timeout=600) as c:
            while not self.stop.is_set():
                with self.ledger.lock:
                    live = list(self.ledger.live.values())
                if not live:
                    time.sleep(0.05)
                    continue
                prompt = self.rng.choice(live)[0]
                try:
                    r = c.post("/generate", json={"prompt": prompt, "max_new_tokens": self.new_tokens})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    self.probes.append((r.json()["memory"]["version"], prompt, r.json()))


class Forked:
    """A tiny-model server forked by tests/support/forkserver.py (see there why): start, SIGKILL, stop."""

    def __init__(self, zygote: subprocess.Popen, env: dict[str, str]):
        self.zygote, self.env = zygote, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, self.log = tempfile.mkstemp(prefix="memoir-forked-", suffix=".log")
        os.close(fd)
        self.pid: int | None = None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def start(self, timeout: float) -> Forked:
        self.zygote.stdin.write(json.dumps({"port": self.port, "log": self.log, "env": self.env}) + "\n")
        self.zygote.stdin.flush()
        self.pid = json.loads(self.zygote.stdout.readline())["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the server exited:\n{self.output()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server was not ready within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log).read_text(errors="replace")[-6000:]

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self._gone(30)

    def _gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():  # the fork server reaps it
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self) -> None:
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGTERM)
            if not self._gone(20):
                os.kill(self.pid, signal.SIGKILL)
                self._gone(30)
        if os.path.exists(self.log):
            os.unlink(self.log)


def kill9(server) -> None:
    if isinstance(server, Forked):
        server.kill9()
    else:
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)


def kill_when(strategy: str, traffic: Traffic, state: Path, rng: random.Random, scale: float,
              acks: tuple[int, int] = (0, 3)) -> bool:
    """Wait for the moment of the kill (after acks[0] to acks[1] more acknowledgements); True
    when the strategy's moment was reached, False when the wait ran out."""
    deadline = time.monotonic() + 30 * scale
    for _ in range(rng.randint(*acks)):
        traffic.acked.clear()
        if not traffic.acked.wait(max(0.0, deadline - time.monotonic())):
            return False
    if strategy == "random":
        time.sleep(rng.uniform(0.0, 1.5) * scale)
        return True
    if strategy == "mid-edit":  # an edit has been training for a while
        wait = rng.uniform(0.0, 0.3) * scale
        while time.monotonic() < deadline:
            since = traffic.in_flight_since
            if since is not None and time.monotonic() - since >= wait:
                return True
            time.sleep(0.002)
        return False
    if strategy == "after-ack":  # the commit and the response are under way
        traffic.acked.clear()
        if not traffic.acked.wait(max(0.0, deadline - time.monotonic())):
            return False
        time.sleep(rng.uniform(0.0, 0.01))
        return True
    snaps = state / SNAPSHOTS  # mid-snapshot: its temporary folder exists
    while time.monotonic() < deadline:
        try:
            if any(TMP_MARK in name for name in os.listdir(snaps)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    return False


@dataclass
class Figures:
    rounds: int = 0
    acks: int = 0
    deletes: int = 0
    strategies: dict[str, int] = field(default_factory=dict)
    hit: dict[str, int] = field(default_factory=dict)
    killed_in_flight: int = 0
    in_flight_landed: int = 0
    torn_tails: int = 0
    snapshot_leftovers: int = 0
    probe_checks: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.rounds} rounds in {self.seconds:.0f} s: {self.acks} acknowledged edits, {self.deletes} "
                f"rollbacks; kill moments {self.strategies} (reached {self.hit}); {self.killed_in_flight} kills "
                f"with a request in flight ({self.in_flight_landed} landed), {self.torn_tails} torn tails, "
                f"{self.snapshot_leftovers} interrupted snapshots; {self.probe_checks} answers compared; failures 0")


def check_after_kill(state: Path, ledger: Ledger, figures: Figures):
    """The directory against the ledger, with the server down; returns the verified view."""
    view, _ = verify(str(state))  # checksums, full replay, W_m == sum of the live deltas
    live = view.registry.live
    if view.torn is not None:
        figures.torn_tails += 1
    figures.snapshot_leftovers += sum(1 for rel in view.leftovers if TMP_MARK in rel)
    pending, ledger.pending = ledger.pending, None
    if pending is not None:
        figures.killed_in_flight += 1
        if pending[0] == "edit" and pending[1] in live:  # durable before the kill: it stays
            figures.in_flight_landed += 1
            rec = live[pending[1]]
            assert (rec.prompt, rec.target_new) == (pending[2], pending[3])
            if rec.supersedes:
                ledger.live.pop(rec.supersedes, None)
            ledger.live[pending[1]] = (pending[2], pending[3])
        elif pending[0] == "delete" and pending[1] not in live:
            figures.in_flight_landed += 1
            ledger.live.pop(pending[1], None)
            ledger.removed.add(pending[1])
    missing = sorted(set(ledger.live) - set(live))
    assert not missing, f"acknowledged edits lost: {missing}"
    back = sorted(ledger.removed & set(live))
    assert not back, f"acknowledged rollbacks undone: {back}"
    extra = sorted(set(live) - set(ledger.live))
    assert not extra, f"edits nobody acknowledged: {extra}"
    for edit_id, rec in live.items():  # all parts of each edit, of the manifest's shape
        m = view.manifest
        assert ledger.live[edit_id] == (rec.prompt, rec.target_new)
        assert tuple(rec.idx.shape) == (m.k,) and tuple(rec.delta.shape) == (m.d_out, m.k), edit_id
        assert rec.idx.unique().numel() == m.k
    return view


def check_restarted(c: httpx.Client, view, probes: list, new_tokens: int, figures: Figures) -> None:
    """The restarted server serves exactly the memory on disk."""
    listed = c.get("/edits", params={"limit": 1000}).json()
    assert [(e["id"], e["version"]) for e in listed["edits"]] == \
        [(r.id, r.version) for r in view.registry.live.values()]
    assert listed["version"] == c.get("/ready").json()["version"] == view.registry.version
    seen = {}
    for version, prompt, answer in probes:  # the newest answer per prompt at the version on disk
        if version == view.registry.version:
            seen[prompt] = answer
    for prompt, answer in list(seen.items())[-3:]:
        again = c.post("/generate", json={"prompt": prompt, "max_new_tokens": new_tokens}).json()
        assert again == answer, (prompt, answer, again)
        figures.probe_checks += 1


def kill_loop(make: callable, state: Path, rounds: int, seed: int, scale: float, new_tokens: int,
              start_timeout: float, acks: tuple[int, int] = (0, 3)) -> Figures:
    rng = random.Random(seed)
    ledger, figures = Ledger(), Figures()
    t0 = time.monotonic()
    view, probes = None, []
    for rnd in range(rounds + 1):
        server = make()
        try:
            server.start(start_timeout)  # no failed restart
            with httpx.Client(base_url=server.url, timeout=120) as c:
                if view is not None:
                    check_restarted(c, view, probes, new_tokens, figures)
            if rnd == rounds:
                break
            traffic = Traffic(server.url, ledger, rng, new_tokens)
            traffic.start()
            strategy = STRATEGIES[rnd % len(STRATEGIES)] if rnd < len(STRATEGIES) else rng.choice(STRATEGIES)
            figures.strategies[strategy] = figures.strategies.get(strategy, 0) + 1
            if kill_when(strategy, traffic, state, rng, scale, acks):
                figures.hit[strategy] = figures.hit.get(strategy, 0) + 1
            kill9(server)
            traffic.join()
            assert not traffic.errors, (traffic.errors, server.output())
        finally:
            server.stop()
        view = check_after_kill(state, ledger, figures)
        probes = traffic.probes
        figures.rounds += 1
    figures.acks, figures.deletes, figures.seconds = ledger.acks, ledger.deletes, time.monotonic() - t0
    assert ledger.acks > 0
    return figures


def report(name: str, figures: Figures) -> None:
    line = f"kill -9 loop ({name}): {figures.line()}"
    print(line)
    out = os.environ.get("MEMOIR_KILL_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


@pytest.fixture
def zygote():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.forkserver"], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["ready"]
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_kill_loop_tiny_model(tmp_path, zygote):
    env = {"MEMOIR_STORE": "dir", "MEMOIR_STATE_DIR": str(tmp_path), "MEMOIR_THREADS": THREADS, **SNAPSHOT_OFTEN}
    figures = kill_loop(lambda: Forked(zygote, env), tmp_path, ROUNDS, seed=1, scale=1.0, new_tokens=6,
                        start_timeout=180)
    report("tiny model", figures)


@pytest.mark.real
def test_kill_loop_default_model(tmp_path):
    def make():
        port = free_port()
        return Server(["-m", "memoir_cli.main", "serve", "--port", str(port), "--threads", THREADS, "--state-dir",
                       str(tmp_path), "--store", "dir", "--log-level", "warning"], SNAPSHOT_OFTEN, port=port)

    # Short answers: a decoding step waits for a training step, so long ones rarely finish between two edits.
    figures = kill_loop(make, tmp_path, REAL_ROUNDS, seed=2, scale=4.0, new_tokens=3, start_timeout=600,
                        acks=(1, 2))
    report("default model", figures)
