"""Writes paused by a fault that passes, and how they resume.

EMFILE and ENFILE (no file descriptor free, often idle sockets), ENOSPC and EDQUOT (a full
disk, until space is freed) and EAGAIN fail an edit, but nothing about the state is wrong:
the journal writer cut the record back, and nothing was acknowledged. So the store pauses
writes instead of failing for good, and a background thread checks, with a growing delay,
that the disk is sound again before writes resume: the active segment re-read and scanned
(a record the failed write left is cut: it was never acknowledged), its last version and
the commit marker against what the store acknowledged, free space for the record that
failed, a descriptor to open. Damage found there stops writes until a restart, as any
other failed write does. EIO is never retried: after a failed fsync the page cache may have
dropped the data, and only a restart, which reads the disk, can say what is there.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from ..errors import StateError
from ..throttle import Throttle
from . import commit, fsio, journal
from .layout import JOURNAL, corrupt, read_bytes

log = logging.getLogger(__name__)

TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.EAGAIN})
FIRST_DELAY, MAX_DELAY = 0.5, 5.0
_throttle = Throttle(10.0)


def check(store, need: int) -> None:
    """Raise OSError while the fault lasts, StateError for damage; return when writes may resume.

    Called under the store's lock."""
    version = store._registry.version
    writer = store._journal
    if writer.segment is not None and writer._fd is not None:
        buf = read_bytes(writer.segment)
        scan = journal.scan(buf)
        if scan.damage is not None:
            if scan.followed is not None:
                raise corrupt(store.root, f"{writer.segment}: damaged at byte {scan.valid_end} ({scan.damage})")
            fsio.truncate(writer._fd, scan.valid_end)  # what the failed write left: never acknowledged
            fsio.fsync(writer._fd)
        if scan.entries and scan.entries[-1].version != version:
            raise corrupt(store.root, f"{writer.segment} ends at version {scan.entries[-1].version}, but the store "
                                      f"acknowledged version {version}")
    marker = commit.read(store.root)
    if marker is not None and marker > version:
        raise corrupt(store.root, f"{commit.COMMIT} says version {marker}, the store acknowledged {version}")
    st = os.statvfs(store.root)
    free = st.f_bavail * st.f_frsize
    if free < need + (64 << 10):
        raise OSError(errno.ENOSPC, f"{free} bytes free, the record needs {need}")
    fsio.fsync_dir(os.path.join(store.root, JOURNAL))  # a descriptor can be opened again


class Healer(threading.Thread):
    def __init__(self, store, need: int):
        super().__init__(name="memoir-heal", daemon=True)
        self.store, self.need = store, need

    def report(self, failure: str) -> None:
        """Log the fault once per interval, however often it happens."""
        skipped = _throttle.due(self.store.root)
        if skipped is not None:
            more = f" ({skipped} more since the last report)" if skipped else ""
            log.error("%s: %s%s; edits are paused and resume by themselves once the store checks sound again",
                      self.store.root, failure, more)

    def run(self) -> None:
        store, delay = self.store, FIRST_DELAY
        while not store._cancel.wait(delay):
            with store._mu:
                if store._healer is not self or store._closed:
                    return
                try:
                    check(store, self.need)
                except StateError as e:
                    store._stop_healing(f"the check before resuming found: {e}")
                    return
                except OSError as e:
                    if e.errno not in TRANSIENT:
                        store._stop_healing(f"the check before resuming failed: {e}")
                        return
                    self.report(f"{store.failure} (still: {e})")
                    delay = min(delay * 2, MAX_DELAY)
                    continue
                failure = store.failure
                store._resume()
            log.warning("%s: the store checks sound again; edits resume (they were paused by: %s)", store.root,
                        failure)
            return
