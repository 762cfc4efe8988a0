"""DirectoryStore: the memory in a state directory, durable before every acknowledgement.

Writes (log_edit, log_removal, create) run under one lock and return only after the bytes
are fsynced. Snapshots run in a background thread: they take the lock only to capture the
live edits and seal the journal segment, then write outside it, so an edit waits at most
for that capture. A failed write or fsync puts the store in a failed state in which every
further write raises DurabilityError: nothing acknowledged is lost, and the process must
restart (start-up cuts a half-written last record) before it takes edits again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from ..basis import Basis
from ..errors import DurabilityError, StateError, TransientDurabilityError
from ..records import EditRecord
from ..state import Loaded, Manifest, SnapshotObserver, SnapshotObservers, check_manifest
from . import commit, fsio, healing, journal, ondisk, reader, snapshot, tensorfile
from .layout import (BASIS, JOURNAL, LOCK, MANIFEST, SEGMENT_SUFFIX, SNAPSHOTS, TMP_MARK, checked_json, corrupt,
                     parse_version, sha256)
from .lock import DirLock
from .registry import Registry

log = logging.getLogger(__name__)


class DirectoryStore:
    """A MemoryStore in a directory; see memoir_core/state.py for how the engine drives it.

    Snapshots start when the journal written since the last one reaches
    max(snapshot_min_bytes, snapshot_ratio x the last snapshot's size): replay at start-up
    stays bounded and each edit is rewritten a bounded number of times on average.
    """

    shared = False  # this process is the only writer (the directory's lock)

    def __init__(self, path: str, *, snapshot_min_bytes: int = 64 << 20, snapshot_ratio: float = 1.0,
                 background: bool = True, accept_loss: bool = False):
        self.root = os.path.abspath(path)
        os.makedirs(self.root, exist_ok=True)
        self._lock = DirLock(os.path.join(self.root, LOCK))
        self._lock.acquire()
        self.snapshot_min_bytes, self.snapshot_ratio, self.background = snapshot_min_bytes, snapshot_ratio, background
        self.accept_loss = accept_loss  # start even where acknowledged edits are missing (said loudly)
        self._marker: commit.Marker | None = None
        self._mu = threading.Lock()  # the log, the registry, the failure flag
        self._snap_mu = threading.Lock()  # one snapshot at a time
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry: Registry | None = None
        self._manifest: Manifest | None = None
        self._journal: journal.JournalWriter | None = None
        self._segment_file: ondisk.OpenFile | None = None  # the segment new edits' deltas are read from
        self._failure: str | None = None
        self._healer: healing.Healer | None = None  # set while a transient fault pauses writes
        self._closed = False
        self.snapshot_version = 0
        self.snapshot_error: str | None = None
        self._snapshot_bytes = 0
        self._journal_bytes = 0  # written since the last snapshot
        self._retry_at = 0
        self.notes: list[str] = []  # what start-up repaired
        self._observers = SnapshotObservers()

    # -- status -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True while the store takes writes (after load/create, before a failure or close)."""
        return self._failure is None and not self._closed and self._registry is not None

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def transient(self) -> bool:
        """The failure is a fault that passes: writes resume by themselves, no restart needed."""
        return self._failure is not None and self._healer is not None

    @property
    def version(self) -> int:
        return self._registry.version if self._registry is not None else 0

    @property
    def where(self) -> str:
        return f"state directory {self.root}"

    def stats(self) -> dict[str, float]:
        return {"snapshot_version": self.snapshot_version, "snapshot_failing": self.snapshot_error is not None}

    def manifest(self) -> Manifest | None:
        found = reader.read_manifest(self.root)
        return found[0] if found else None

    def check(self, expected: Manifest) -> None:
        """StateMismatchError if the stored state was made for another model or layout."""
        stored = self.manifest()
        if stored is not None:
            check_manifest(stored, expected, f"state directory {self.root}")

    # -- start-up ---------------------------------------------------------------------------
    def load(self, expect: Manifest | None = None) -> Loaded | None:
        with self._mu:
            self._open_check()
            if self._registry is not None:
                raise StateError("load() or create() was already called on this store")
            view = reader.read(self.root, expect, accept_loss=self.accept_loss)
            if view is None:
                return None
            self._repair(view)
            try:
                self._marker = commit.Marker(self.root, view.registry.version, reset=bool(view.lost))
            except OSError as e:
                raise DurabilityError(f"cannot open {self.root}/{commit.COMMIT}: {e}") from e
            loaded = view.loaded()
            view.registry.acc = None  # only start-up needs W_m; the engine keeps it from here
            self._registry, self._manifest = view.registry, view.manifest
            self._journal = journal.JournalWriter(os.path.join(self.root, JOURNAL),
                                                  view.segments[-1].path if view.segments else None)
            self.snapshot_version, self._snapshot_bytes = view.snapshot_version, view.snapshot_bytes
            self._journal_bytes = view.journal_bytes
            return loaded

    def _repair(self, view: reader.View) -> None:
        for lost in view.lost:
            msg = f"ACKNOWLEDGED EDITS LOST, accepted (--accept-state-loss): {lost}"
            log.critical("%s: %s", self.root, msg)
            self.notes.append(msg)
        if view.torn is not None:
            t = view.torn
            msg = (f"cut a torn last record from {os.path.relpath(t.path, self.root)}: {t.size} bytes at byte "
                   f"{t.offset} ({t.why}): a write that never completed, so never acknowledged")
            if t.whole:
                msg = self._keep_aside(t)
            log.warning("%s: %s", self.root, msg)
            self.notes.append(msg)
            try:
                fd = os.open(t.path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    fsio.truncate(fd, t.offset)
                    fsio.fsync(fd)
                finally:
                    fsio.close(fd)
            except OSError as e:  # appending after the tear would bury it mid-journal
                raise DurabilityError(f"cannot cut the torn record in {t.path}: {e}") from e
        for rel in view.leftovers:
            path = os.path.join(self.root, rel)
            try:
                fsio.rmtree(path) if os.path.isdir(path) else fsio.unlink(path)
                self.notes.append(f"removed {rel} (left by an interrupted write or covered by the snapshot)")
            except OSError as e:
                log.warning("%s: could not remove %s: %s", self.root, rel, e)
        if view.leftovers:
            for d in (self.root, os.path.join(self.root, JOURNAL), os.path.join(self.root, SNAPSHOTS)):
                if os.path.isdir(d):
                    try:
                        fsio.fsync_dir(d)
                    except OSError:
                        pass  # leftovers that come back are removed again

    def _keep_aside(self, t: reader.Torn) -> str:
        """Copy a damaged whole record next to its segment before it is cut: evidence is kept."""
        aside = f"{t.path}.damaged-{t.offset}"
        try:
            with open(t.path, "rb") as f:
                f.seek(t.offset)
                data = f.read()
            if os.path.exists(aside):
                fsio.unlink(aside)
            fsio.write_file(aside, data)
            fsio.fsync_dir(os.path.dirname(t.path))
        except OSError as e:
            raise DurabilityError(f"cannot keep the damaged record of {t.path} aside in {aside}: {e}") from e
        return (f"moved a damaged last record out of {os.path.relpath(t.path, self.root)}: {t.size} bytes at byte "
                f"{t.offset} ({t.why}), kept in {os.path.relpath(aside, self.root)}")

    def create(self, manifest: Manifest, basis: Basis) -> None:
        with self._mu:
            self._open_check()
            if self._registry is not None or reader.read_manifest(self.root) is not None:
                raise StateError(f"state directory {self.root} already holds a memory; load it instead")
            stray = reader.stray_state(self.root)
            if stray:
                raise corrupt(self.root, f"{MANIFEST} is missing, but {', '.join(stray)} exist")
            if tuple(basis.permutation.shape) != (manifest.width,):
                raise ValueError(f"basis width {tuple(basis.permutation.shape)} != manifest width {manifest.width}")
            data = tensorfile.encode(basis.tensors(), {"prefixes": json.dumps(list(basis.prefixes))})
            body = {**manifest.to_dict(), "basis_sha256": sha256(data), "created_at": time.time()}
            try:
                for name in os.listdir(self.root):  # a create that crashed before its manifest
                    if TMP_MARK in name:
                        fsio.unlink(os.path.join(self.root, name))
                for d in (JOURNAL, SNAPSHOTS):
                    if not os.path.isdir(os.path.join(self.root, d)):
                        fsio.mkdir(os.path.join(self.root, d))
                commit.create_file(self.root)
                fsio.replace_file(os.path.join(self.root, BASIS), data)  # fsyncs the root: the dirs too
                fsio.replace_file(os.path.join(self.root, MANIFEST), checked_json(body, "memoir-manifest"))
                fsio.fsync_dir(os.path.dirname(self.root))
                self._marker = commit.Marker(self.root, 0)
            except OSError as e:
                raise self._fail("creating the state", e) from e
            self._manifest = Manifest.from_dict(body)
            self._registry = Registry(manifest.k, manifest.d_out, manifest.width)
            self._journal = journal.JournalWriter(os.path.join(self.root, JOURNAL))

    # -- the log ----------------------------------------------------------------------------
    def log_edit(self, record: EditRecord) -> None:
        with self._mu:
            self._writable()
            self._registry.check_add(record)
            try:
                data = journal.encode_edit(record)
            except (TypeError, ValueError) as e:
                raise ValueError(f"edit {record.id!r} cannot be stored: {e}") from None
            start = self._append(record.version, data, f"edit {record.id!r}")
            self._registry.add(record)
            self._spill(record, data, start)
            self._maybe_snapshot()

    def log_removal(self, edit_id: str, version: int) -> None:
        with self._mu:
            self._writable()
            self._registry.check_remove(edit_id, version)
            self._append(version, journal.encode_removal(edit_id, version), f"removal of {edit_id!r}")
            self._registry.remove(edit_id, version)
            self._maybe_snapshot()

    def _append(self, version: int, data: bytes, what: str) -> int:
        try:
            start = self._journal.append(version, data, lambda: self._marker.write(version))
        except OSError as e:
            if e.errno in healing.TRANSIENT:
                raise self._pause(f"writing the {what}", e, len(data)) from e
            raise self._fail(f"writing the {what}", e) from e
        self._journal_bytes += len(data)
        return start

    def _spill(self, record: EditRecord, data: bytes, start: int) -> None:
        """The record's delta and inputs leave RAM: from here on they are read from the journal."""
        path = self._journal.segment
        if self._segment_file is None or self._segment_file.path != path:
            try:
                self._segment_file = ondisk.OpenFile(path)
            except OSError as e:  # durable already: keeping the tensors in RAM loses nothing
                log.warning("%s: cannot reopen %s to read deltas from it (%s); edit %r stays in RAM",
                            self.root, path, e, record.id)
                return
        entry, _ = journal.parse_at(data, 0)
        ondisk.spill_entry(record, self._segment_file, data, entry.payload, base=start)

    def _pause(self, doing: str, error: OSError, need: int) -> TransientDurabilityError:
        self._failure = f"{doing} failed: {error}"
        if self._healer is None:
            self._healer = healing.Healer(self, need)
            self._healer.start()
        self._healer.report(self._failure)
        return TransientDurabilityError(
            f"state directory {self.root}: {self._failure}. It was not acknowledged; every edit acknowledged "
            "before is safe. A passing fault: edits resume by themselves once the store checks sound again "
            "(no restart needed); retry shortly.")

    def _resume(self) -> None:  # under _mu, by the healer once the store checks sound
        self._failure, self._healer = None, None

    def _stop_healing(self, why: str) -> None:  # under _mu: the check found damage; a restart must look
        self._failure, self._healer = f"{self._failure}; then {why}", None
        log.error("%s: %s; the store takes no more writes", self.root, self._failure)

    def _fail(self, doing: str, error: OSError) -> DurabilityError:
        self._failure = f"{doing} failed: {error}"
        log.error("%s: %s; the store takes no more writes", self.root, self._failure)
        return DurabilityError(
            f"state directory {self.root}: {self._failure}. It was not acknowledged; every edit acknowledged "
            "before is safe. No more edits are taken: fix the disk (space, permissions, hardware), then restart."
        )

    def _writable(self) -> None:
        self._open_check()
        if self._failure is not None and self._healer is not None:
            raise TransientDurabilityError(f"state directory {self.root}: edits are paused since {self._failure}; "
                                           "they resume by themselves once the store checks sound again")
        if self._failure is not None:
            raise DurabilityError(f"state directory {self.root} takes no writes since {self._failure}; restart")
        if self._registry is None:
            raise StateError("call load() or create() before writing")

    def _open_check(self) -> None:
        if self._closed:
            raise StateError(f"the store of {self.root} is closed")

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self) -> int:
        """Write a snapshot of the live memory now (if anything changed) and compact the journal.

        Returns the snapshot's version. A failed snapshot raises StateError but leaves the store
        writable: the journal still holds everything. Observers (observe()) hear of each call.
        """
        with self._observers.timed():
            return self._snapshot()

    def observe(self, observer: SnapshotObserver) -> None:
        self._observers.add(observer)

    def _snapshot(self) -> int:
        with self._snap_mu:
            with self._mu:
                self._writable()
                reg = self._registry
                if reg.version == self.snapshot_version:
                    return reg.version
                records, order, version = list(reg.live.values()), list(reg.order), reg.version
                self._journal.rotate()  # records from here on go to a new segment
                captured = self._journal_bytes
                dims = {"d_out": reg.d_out, "width": reg.width, "k": reg.k}
            t0 = time.perf_counter()
            try:
                size = snapshot.write(self.root, version, records, order, dims, self._cancel)
            except snapshot.Cancelled:
                return self.snapshot_version
            except OSError as e:
                self.snapshot_error = str(e)
                self._retry_at = self._journal_bytes + self.snapshot_min_bytes
                raise StateError(f"snapshot at version {version} failed ({e}); the journal still holds "
                                 "every edit") from e
            try:
                snapshot.repoint(self.root, version, records, dims)
            except OSError as e:  # the refs keep the old files open: readable, their space held
                log.warning("%s: deltas still read from the journal, not snapshot %d: %s", self.root, version, e)
            with self._mu:
                self.snapshot_version, self._snapshot_bytes, self.snapshot_error = version, size, None
                self._journal_bytes -= captured
            log.info("%s: snapshot at version %d, %d edits, %.1f MB in %.2fs", self.root, version, len(records),
                     size / 1e6, time.perf_counter() - t0)
            self._compact(version)
            return version

    def _compact(self, version: int) -> None:
        """Delete what the new snapshot covers: older segments and snapshots (best effort)."""
        jdir, sdir = os.path.join(self.root, JOURNAL), os.path.join(self.root, SNAPSHOTS)
        try:
            for name in os.listdir(jdir):
                first = parse_version(name, SEGMENT_SUFFIX)
                if first is not None and first <= version:
                    fsio.unlink(os.path.join(jdir, name))
            current = snapshot.snapshot_name(version)
            for name in os.listdir(sdir):
                if name != current and TMP_MARK not in name:
                    fsio.rmtree(os.path.join(sdir, name))
            fsio.fsync_dir(jdir)
            fsio.fsync_dir(sdir)
        except OSError as e:  # what stays is skipped at replay and removed at the next start
            log.warning("%s: compaction after snapshot %d incomplete: %s", self.root, version, e)

    def _maybe_snapshot(self) -> None:  # under _mu
        if not self.background or not self.ready:
            return
        due = max(self.snapshot_min_bytes, self.snapshot_ratio * self._snapshot_bytes, self._retry_at)
        if self._journal_bytes < due or (self._thread is not None and self._thread.is_alive()):
            return
        self._thread = threading.Thread(target=self._background_snapshot, name="memoir-snapshot", daemon=True)
        self._thread.start()

    def _background_snapshot(self) -> None:
        try:
            self.snapshot()
        except Exception as e:  # the journal still has everything; retried later
            log.error("%s: background snapshot failed: %s", self.root, e)

    def wait_snapshot(self) -> None:
        """Wait for a background snapshot in flight (tests, orderly shutdown)."""
        if self._thread is not None:
            self._thread.join()

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop (a snapshot in flight is abandoned), close the journal, release the lock."""
        if self._closed:
            return
        self._cancel.set()
        self.wait_snapshot()
        with self._mu:
            if self._journal is not None:
                self._journal.close()
            if self._marker is not None:
                self._marker.close()
            self._closed = True
        self._lock.release()

    def __enter__(self) -> "DirectoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
