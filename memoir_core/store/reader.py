"""Reading a state directory: manifest, basis, current snapshot, then the journal after it.

Pure: it changes nothing on disk. What start-up may repair (a torn last record to cut,
leftovers of interrupted snapshots, segments a snapshot already covers) is returned as a
plan; DirectoryStore carries it out, the read-only CLI only reports it. A loss of acknowledged
edits (a whole last record that fails its checksum, a journal that ends below the commit
marker) is damage, unless the caller accepts the loss: then it is in the plan, with its cause.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..basis import Basis
from ..state import Loaded, Manifest, check_manifest
from . import commit, journal, ondisk, snapshot, tensorfile
from .layout import (BASIS, COMMIT, CURRENT, JOURNAL, LOCK, MANIFEST, RECOVERY, SEGMENT_SUFFIX, SNAPSHOTS, TMP_MARK,
                     corrupt, parse_checked, parse_version, read_bytes, sha256)
from .registry import Accumulator, Registry, RegistryError


@dataclass
class Segment:
    path: str
    first: int  # version in its name
    size: int
    valid_end: int
    records: int
    last_version: int | None


@dataclass
class Torn:
    path: str
    offset: int  # where the damaged tail starts (the file is cut to this length)
    size: int  # bytes cut
    why: str
    whole: bool = False  # a whole record that fails its checksum (an accepted loss): its bytes are kept aside


@dataclass
class View:
    root: str
    manifest: Manifest
    basis: Basis
    registry: Registry  # live edits after replay; .acc is W_m's accumulator (Accumulator)
    snapshot: str | None = None
    snapshot_version: int = 0
    snapshot_bytes: int = 0
    segments: list[Segment] = field(default_factory=list)
    journal_bytes: int = 0  # bytes of records after the snapshot
    replayed: int = 0
    torn: Torn | None = None
    leftovers: list[str] = field(default_factory=list)  # safe to delete
    lost: list[str] = field(default_factory=list)  # acknowledged edits missing, accepted by the caller
    marker: int | None = None  # the commit marker's version (None: no marker)
    recent: list[dict[str, Any]] = field(default_factory=list)  # newest log entries (headers)
    manifest_body: dict[str, Any] = field(default_factory=dict)
    basis_raw: bytes = b""

    def loaded(self) -> Loaded:
        reg = self.registry
        acc = reg.acc.tensor() if reg.acc is not None else None
        return Loaded(self.manifest, self.basis, list(reg.live.values()), reg.version, acc, list(reg.order))

    @property
    def dims(self) -> dict[str, int]:
        return {"d_out": self.manifest.d_out, "width": self.manifest.width, "k": self.manifest.k}


def read_manifest(root: str) -> tuple[Manifest, dict[str, Any]] | None:
    path = os.path.join(root, MANIFEST)
    try:
        raw = bytes(read_bytes(path))
    except FileNotFoundError:
        return None
    body = parse_checked(raw, "memoir-manifest", root, MANIFEST)
    try:
        return Manifest.from_dict(body), body
    except TypeError:
        raise corrupt(root, f"{MANIFEST} lacks fields of a manifest") from None


def stray_state(root: str) -> list[str]:
    """State files that only a created memory has (their presence without a manifest is damage)."""
    found = []
    if os.path.exists(os.path.join(root, CURRENT)):
        found.append(CURRENT)
    jdir = os.path.join(root, JOURNAL)
    if os.path.isdir(jdir):
        found += [f"{JOURNAL}/{n}" for n in sorted(os.listdir(jdir)) if n.endswith(SEGMENT_SUFFIX)
                  and os.path.getsize(os.path.join(jdir, n)) > 0]
    return found


def read_basis(root: str, body: dict[str, Any], manifest: Manifest) -> tuple[Basis, bytes]:
    try:
        buf = read_bytes(os.path.join(root, BASIS))
    except FileNotFoundError:
        raise corrupt(root, f"{BASIS} is missing; without the permutation and background mean every stored "
                            "mask is meaningless") from None
    if sha256(buf) != body.get("basis_sha256"):
        raise corrupt(root, f"{BASIS} fails its checksum")
    try:
        tensors, meta = tensorfile.decode(buf)
        prefixes = json.loads(meta["prefixes"])
        perm, mean = tensors["permutation"], tensors["background_mean"]
        route = tensors.get("route_mean")
    except (ValueError, KeyError) as e:
        raise corrupt(root, f"{BASIS} is unreadable: {e}") from None
    if any(tuple(t.shape) != (manifest.width,) for t in (perm, mean, route) if t is not None):
        raise corrupt(root, f"{BASIS} does not match width {manifest.width}")
    return Basis(perm.clone(), mean.clone(), list(prefixes), None if route is None else route.clone()), bytes(buf)


def _leftovers(root: str, current: str | None) -> list[str]:
    out = [n for n in os.listdir(root) if TMP_MARK in n]
    sdir = os.path.join(root, SNAPSHOTS)
    if os.path.isdir(sdir):
        out += [f"{SNAPSHOTS}/{n}" for n in sorted(os.listdir(sdir)) if n != current]
    return out


def _segments(root: str) -> list[tuple[int, str]]:
    jdir = os.path.join(root, JOURNAL)
    if not os.path.isdir(jdir):
        return []
    found = []
    for name in os.listdir(jdir):
        v = parse_version(name, SEGMENT_SUFFIX)
        if v is not None:
            found.append((v, os.path.join(jdir, name)))
    return sorted(found)


ACCEPT = ("To start anyway without what is lost, start the server with --accept-state-loss "
          "(MEMOIR_ACCEPT_STATE_LOSS=1); the damaged bytes are kept beside the journal.")


def read(root: str, expect: Manifest | None = None, keep_recent: int = 0, accept_loss: bool = False,
         full: bool = False) -> View | None:
    """The state in `root`, checksums checked and the journal replayed; None if it holds none.

    accept_loss: a loss of acknowledged edits is reported in View.lost instead of raised.
    full: every byte of the snapshot read and checked now (the operator's tools); otherwise the
    snapshot's deltas are checked when they are read (snapshot.read)."""
    root = os.path.abspath(root)
    found = read_manifest(root)
    if found is None:
        stray = stray_state(root)
        if stray:
            raise corrupt(root, f"{MANIFEST} is missing, but {', '.join(stray)} exist")
        return None
    manifest, body = found
    marker = commit.read(root)  # before the journal: a running server writes the journal first
    if expect is not None:
        check_manifest(manifest, expect, f"state directory {root}")
    basis, basis_raw = read_basis(root, body, manifest)
    dims = {"d_out": manifest.d_out, "width": manifest.width, "k": manifest.k}
    current = snapshot.read_current(root)
    view = View(root, manifest, basis, Registry(manifest.k, manifest.d_out, manifest.width),
                manifest_body=body, basis_raw=basis_raw)
    if current is not None:
        version, records, order, acc, size = snapshot.read(root, current, dims, full)
        try:
            view.registry.put(records, order, version)
        except RegistryError as e:
            raise corrupt(root, f"{SNAPSHOTS}/{current['snapshot']}: {e}") from None
        view.registry.acc = Accumulator(manifest.d_out, manifest.width, acc)
        view.snapshot, view.snapshot_version, view.snapshot_bytes = current["snapshot"], version, size
    else:
        view.registry.acc = Accumulator(manifest.d_out, manifest.width)
    view.leftovers = _leftovers(root, view.snapshot)
    view.marker = marker
    _replay(view, _segments(root), keep_recent, accept_loss)
    if marker is not None and marker > view.registry.version:
        end = view.registry.version
        gap = (f"{COMMIT} says version {marker} was acknowledged, but the snapshot and journal end at version "
               f"{end}: {marker - end} acknowledged edit(s) or rollback(s) (versions {end + 1}..{marker}) are "
               "missing (a journal cut at a record boundary or emptied, or a segment deleted)")
        if not accept_loss:
            raise corrupt(root, gap, _todo())
        view.lost.append(gap)
    return view


def _todo() -> str:
    return f"{RECOVERY} {ACCEPT}"


def _acknowledged(view: View, buf, scan: journal.Scan) -> bool:
    """Whether a whole damaged last record may hold an acknowledged edit. COMMIT is written after
    the record is fsynced, so a record whose version is past it never was: a write cut short by a
    power loss that left its length but not all its bytes, cut like any torn write."""
    named = journal.guess(buf, scan.valid_end)
    return view.marker is None or named is None or named[0] <= view.marker


def _whole_damage(view: View, rel: str, buf, scan: journal.Scan, accept_loss: bool) -> None:
    """A whole last record that fails its checksum: an acknowledged edit, damaged on disk."""
    named = journal.guess(buf, scan.valid_end)
    what = f"version {named[0]}, edit or rollback {named[1]!r}" if named else "an edit whose header is unreadable"
    msg = (f"{rel}: the last record, at byte {scan.valid_end} ({len(buf) - scan.valid_end} bytes, all of it "
           f"present), is damaged ({scan.damage}): this is corruption, not a torn write, and it would lose {what}")
    if not accept_loss:
        raise corrupt(view.root, msg, _todo())
    view.lost.append(msg)


def _replay(view: View, segments: list[tuple[int, str]], keep_recent: int, accept_loss: bool) -> None:
    root, reg = view.root, view.registry
    for i, (first, path) in enumerate(segments):
        rel = os.path.relpath(path, root)
        buf = read_bytes(path)
        scan = journal.scan(buf)
        last = i == len(segments) - 1
        if scan.damage is not None:
            where = f"{rel}: the record at byte {scan.valid_end} is damaged ({scan.damage})"
            if scan.followed is not None:
                raise corrupt(root, f"{where}, and a valid record follows at byte {scan.followed}, so this is "
                                    "not a torn write")
            if not last:
                raise corrupt(root, f"{where}, and newer journal segments follow it")
            whole = scan.whole and _acknowledged(view, buf, scan)
            if whole:
                _whole_damage(view, rel, buf, scan, accept_loss)
            view.torn = Torn(path, scan.valid_end, len(buf) - scan.valid_end, scan.damage, whole)
        entries = scan.entries
        seg = Segment(path, first, len(buf), scan.valid_end, len(entries), entries[-1].version if entries else None)
        if entries and entries[0].version != first:
            raise corrupt(root, f"{rel} starts with version {entries[0].version}, its name says {first}")
        if not entries or entries[-1].version <= view.snapshot_version:
            view.leftovers.append(rel)  # empty, or covered by the snapshot
            continue
        view.segments.append(seg)
        file = ondisk.OpenFile(path)  # the replayed edits' deltas are read from here on demand
        for e in entries:
            if e.version <= view.snapshot_version:
                continue
            if e.version != reg.version + 1:
                gap = f"versions {reg.version + 1}..{e.version - 1} are missing before {rel} byte {e.offset}"
                if reg.version == view.snapshot_version:
                    gap += (f" (the journal goes on from the snapshot at version {view.snapshot_version}"
                            + (")" if view.snapshot else f"; there is no snapshot: {CURRENT} is missing)"))
                raise corrupt(root, gap)
            try:
                if e.header["kind"] == "edit":
                    rec = journal.decode_edit(buf, e)
                    reg.add(rec)  # sums its delta into W_m's accumulator, then it leaves RAM:
                    ondisk.spill_entry(rec, file, buf, e.payload)
                else:
                    reg.remove(e.header["id"], e.version)
            except (RegistryError, ValueError) as err:
                raise corrupt(root, f"{rel} byte {e.offset} (version {e.version}): {err}") from None
            view.replayed += 1
            view.journal_bytes += e.end - e.offset
            if keep_recent:
                view.recent = (view.recent + [e.header])[-keep_recent:]


def lock_path(root: str) -> str:
    return os.path.join(root, LOCK)
