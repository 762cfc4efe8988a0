"""PostgresStore: the memory as an ordered edit log in PostgreSQL, shared by many replicas.

Every replica may write, one at a time. The write lock is a transaction-scoped advisory lock
taken *before* an edit trains and released by the commit that appends it:

    begin_write(v)   BEGIN; pg_try_advisory_xact_lock; the entries after v (the caller applies
                     them, so it trains on the newest memory); None if another replica writes
    (the edit trains; the transaction stays open, holding the lock)
    log_edit(rec)    INSERT the log and delta rows, NOTIFY, COMMIT: the lock is released, the
                     edit is durable and every follower is told; only then is it acknowledged

A replica that dies while it holds the lock (SIGKILL, a lost connection) leaves an aborted
transaction: nothing of its edit is in the log and the next writer takes the lock. Errors are
not sticky as in the state directory: a failed transaction left nothing behind (and a commit
whose outcome was lost is found in the log by the follower), so the next edit may try again.

Reads (load, head, fetch_after) use a second connection; LISTEN uses a third (listener()).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

import psycopg

from ...basis import Basis
from ...errors import DurabilityError, StateError
from ...records import EditRecord
from ...replica import LogEntry
from ...state import Loaded, Manifest, SnapshotObserver, SnapshotObservers, check_manifest
from ..layout import sha256
from ..registry import Accumulator, Registry, RegistryError
from . import log as logrows
from . import blobs, schema, snapshots
from .codec import corrupt, decode_basis, edit_row, encode_basis
from .fetch import Fetcher
from .listen import Listener

log = logging.getLogger(__name__)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable PostgreSQL URL>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


class PostgresStore:
    shared = True  # many replicas write through it: the writer takes the lock before training
    root: str | None = None  # no state directory: the audit trail is a table (memoir_audit)
    transient = False  # a failure here is never sticky (see the module's docstring)

    def __init__(self, url: str, *, replica: str | None = None, snapshot_every: int = 100,
                 connect_timeout: float = 10.0, write_idle_timeout: float = 600.0, large_delta: int = 16 << 20):
        self.url = url
        self.where = f"PostgreSQL ({redact(url)})"
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        self.snapshot_every = snapshot_every
        self.large_delta = large_delta  # deltas above this many bytes go to large objects (blobs.py)
        self.connect_timeout = connect_timeout
        self.write_idle_timeout = write_idle_timeout
        self._read_mu = threading.Lock()  # the read connection: the loader, then the follower
        self._rconn: psycopg.Connection | None = None
        self._wconn: psycopg.Connection | None = None  # the engine thread's (writes)
        self._init_conn: psycopg.Connection | None = None  # holds the init lock until create()
        self._writing = False  # a write transaction holding the lock is open
        self._manifest: Manifest | None = None
        self._snap_thread: threading.Thread | None = None
        self._closed = False
        self.failure: str | None = None  # never sticky here (see the module's docstring)
        self.version = 0  # the newest version this store appended or loaded
        self.deltas = Fetcher(self)  # stored edits' deltas, read back on demand
        self._observers = SnapshotObservers()

    # -- connections ------------------------------------------------------------------------
    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        try:
            # client-side keepalives: a database host that vanishes without closing the connection
            # is noticed in about 25 s instead of the system's two hours
            return psycopg.connect(self.url, autocommit=autocommit, connect_timeout=max(1, int(self.connect_timeout)),
                                   application_name=f"memoir {self.replica}"[:63], keepalives=1,
                                   keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        except psycopg.Error as e:
            raise DurabilityError(f"cannot connect to {self.where}: {e}") from e

    def _reader(self) -> psycopg.Connection:
        if self._rconn is None or self._rconn.closed:
            self._rconn = self.connect()
        return self._rconn

    def _writer(self) -> psycopg.Connection:
        if self._wconn is None or self._wconn.closed:
            self._wconn = self.connect(autocommit=False)
            # a replica that hangs (not dies) while it holds the lock lets go after this long, and
            # one cut off by the network (no connection close) once the server's keepalives fail
            for name, value in (("idle_in_transaction_session_timeout", int(self.write_idle_timeout * 1000)),
                                ("tcp_keepalives_idle", 10), ("tcp_keepalives_interval", 5),
                                ("tcp_keepalives_count", 3)):
                self._wconn.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
            self._wconn.commit()
        return self._wconn

    def _drop_reader(self) -> None:
        if self._rconn is not None:
            try:
                self._rconn.close()
            except psycopg.Error:
                pass
            self._rconn = None

    @property
    def ready(self) -> bool:
        return not self._closed and self._manifest is not None

    # -- start-up ---------------------------------------------------------------------------
    def load(self, expect: Manifest | None = None) -> Loaded | None:
        """The newest memory (snapshot + log tail), or None for an empty database: then this
        replica holds the init lock until create(), and the others wait in load()."""
        init = self.connect()
        try:
            init.execute("SELECT pg_advisory_lock(%s)", (schema.INIT_LOCK,))
            # Only on a database without the tables (created in one transaction: the last one
            # stands for all): the DDL's table locks would otherwise queue behind a writer's
            # transaction that is training and block every reader behind them.
            if init.execute("SELECT to_regclass(%s)", (schema.TABLES[0],)).fetchone()[0] is None:
                with init.transaction():
                    init.execute(schema.DDL)
            row = init.execute("SELECT body FROM memoir_manifest WHERE id = 1").fetchone()
            if row is None:
                self._init_conn, init = init, None  # create() writes the manifest, then unlocks
                return None
        except psycopg.Error as e:
            raise DurabilityError(f"cannot read the memory from {self.where}: {e}") from e
        finally:
            if init is not None:
                init.close()
        loaded = self.load_latest()
        if expect is not None:
            check_manifest(loaded.manifest, expect, self.where)
        return loaded

    def load_latest(self) -> Loaded:
        """Manifest, basis, the newest snapshot's live edits and the log after it, read in one
        consistent view (a compaction running meanwhile changes nothing of what is read)."""
        with self._read_mu:
            conn = self._reader()
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    return self._read_state(conn)
            except psycopg.Error as e:
                self._drop_reader()
                raise DurabilityError(f"cannot read the memory from {self.where}: {e}") from e

    def _read_state(self, conn) -> Loaded:
        row = conn.execute("SELECT body, basis FROM memoir_manifest WHERE id = 1").fetchone()
        if row is None:
            raise StateError(f"{self.where} holds no memory (memoir_manifest is empty)")
        body, basis_raw = row
        try:
            manifest = Manifest.from_dict(body)
        except TypeError:
            raise corrupt("memoir_manifest lacks fields of a manifest") from None
        if sha256(bytes(basis_raw)) != body.get("basis_sha256"):
            raise corrupt("the basis fails its checksum")
        basis = decode_basis(bytes(basis_raw), manifest.width)
        # W_m is summed here, so the engine applies no delta and each one leaves RAM once summed
        reg = Registry(manifest.k, manifest.d_out, manifest.width, acc=Accumulator(manifest.d_out, manifest.width))
        snap = snapshots.newest(conn)
        try:
            if snap is not None:
                version, live, order = snap
                records = []
                for start in range(0, len(live), logrows.PAGE):  # a page of deltas in RAM at a time
                    for e in logrows.rows(conn, live[start : start + logrows.PAGE]):
                        reg.acc.add(e.record.idx, e.record.delta)
                        self.deltas.spill(e.record)
                        records.append(e.record)
                if len(records) != len(live):
                    raise corrupt(f"the snapshot at version {version} names edits the log no longer holds")
                reg.put(records, order, version)
            for e in logrows.all_after(conn, reg.version):
                if e.kind == "edit":
                    reg.add(e.record)
                else:
                    reg.remove(e.edit_id, e.version)
        except RegistryError as e:
            raise corrupt(str(e)) from None
        for rec in reg.live.values():
            self.deltas.spill(rec)
        self._manifest, self.version = manifest, reg.version
        return Loaded(manifest, basis, list(reg.live.values()), reg.version, reg.acc.tensor(), list(reg.order))

    def create(self, manifest: Manifest, basis: Basis) -> None:
        conn = self._init_conn
        if conn is None:
            raise StateError("create() follows a load() that found an empty database")
        data = encode_basis(basis)
        body = {**manifest.to_dict(), "basis_sha256": sha256(data)}
        try:
            with conn.transaction():
                conn.execute("INSERT INTO memoir_manifest (id, body, basis) VALUES (1, %s, %s)",
                             (json.dumps(body), data))
        except psycopg.Error as e:
            raise DurabilityError(f"cannot create the memory in {self.where}: {e}") from e
        finally:
            conn.close()  # releases the init lock: the other replicas read this manifest
            self._init_conn = None
        self._manifest = Manifest.from_dict(body)

    # -- reading the log ----------------------------------------------------------------------
    def _read(self, fn, doing: str):
        """fn(read connection), once more on a new connection if the old one was lost (a restarted
        database, a dropped idle connection)."""
        with self._read_mu:
            for attempt in (0, 1):
                try:
                    return fn(self._reader())
                except psycopg.OperationalError as e:
                    self._drop_reader()
                    if attempt:
                        raise DurabilityError(f"cannot {doing} from {self.where}: {e}") from e
                except psycopg.Error as e:
                    self._drop_reader()
                    raise DurabilityError(f"cannot {doing} from {self.where}: {e}") from e

    def head(self) -> int:
        return self._read(logrows.head, "read the log head")

    def fetch_after(self, version: int) -> list[LogEntry]:
        """The next page of entries after `version` (LogGapError: compacted; start over)."""
        return self._read(lambda c: logrows.after(c, version), "read the log")

    def listener(self) -> Listener:
        return Listener(self.connect(), schema.CHANNEL)

    def report(self, version: int, url: str | None = None) -> None:
        """Record this replica's applied version (memoir_replica: status and lag); forget replicas
        not seen for a day (default names change with every process)."""
        def write(c) -> None:
            c.execute("INSERT INTO memoir_replica (name, url, version, seen_at) VALUES (%s, %s, %s, now()) "
                      "ON CONFLICT (name) DO UPDATE SET url = excluded.url, version = excluded.version, "
                      "seen_at = now()", (self.replica, url, version))
            c.execute("DELETE FROM memoir_replica WHERE seen_at < now() - interval '1 day'")

        self._read(write, "report")

    def replicas(self) -> list[dict]:
        """Every replica that reported: name, URL, applied version, seconds since it was last seen."""
        rows = self._read(lambda c: c.execute(
            "SELECT name, url, version, extract(epoch FROM now() - seen_at) FROM memoir_replica ORDER BY name"
        ).fetchall(), "read the replicas")
        return [{"name": n, "url": u, "version": int(v), "seen_seconds_ago": round(float(a), 3)} for n, u, v, a in rows]

    # -- writing ------------------------------------------------------------------------------
    def begin_write(self, after: int) -> list[LogEntry] | None:
        """Take the cluster's write lock if it is free: the entries after `after` (apply them
        before training), or None when another replica is writing (try again shortly)."""
        if self._writing:
            return self._in_write(lambda c: logrows.all_after(c, after))
        for attempt in (0, 1):
            try:
                conn = self._writer()
                if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (schema.WRITE_LOCK,)).fetchone()[0]:
                    conn.rollback()
                    return None
                self._writing = True
                return logrows.all_after(conn, after)
            except psycopg.OperationalError as e:
                self._abort()
                if attempt or (self._wconn is not None and not self._wconn.closed):
                    raise DurabilityError(f"cannot take the write lock in {self.where}: {e}") from e
                # the connection was lost while idle (a database restart): once more on a new one
            except psycopg.Error as e:
                self._abort()
                raise DurabilityError(f"cannot take the write lock in {self.where}: {e}") from e
            except Exception:
                self._abort()
                raise
        return None  # pragma: no cover

    def _in_write(self, fn):
        try:
            return fn(self._wconn)
        except psycopg.Error as e:
            self._abort()
            raise DurabilityError(f"the write transaction in {self.where} failed: {e}") from e

    def abort_write(self) -> None:
        """Give the write lock back without writing (the edit failed, or needed no training)."""
        if self._writing:
            self._abort()

    def _abort(self) -> None:
        self._writing = False
        if self._wconn is not None and not self._wconn.closed:
            try:
                self._wconn.rollback()
            except psycopg.Error:
                self._wconn.close()

    def log_edit(self, record: EditRecord) -> None:
        row = edit_row(record)  # ValueError before anything is written

        def insert(c) -> None:
            c.execute("INSERT INTO memoir_log (seq, kind, edit_id, supersedes, info, idx, author, replica) "
                      "VALUES (%s, 'edit', %s, %s, %s, %s, %s, %s)",
                      (row["seq"], row["edit_id"], row["supersedes"], row["info"], row["idx"], row["author"],
                       self.replica))
            inline, oid = blobs.write(c, row["delta"], self.large_delta)
            c.execute("INSERT INTO memoir_delta (seq, sha256, bytes, delta, lo) VALUES (%s, %s, %s, %s, %s)",
                      (row["seq"], row["sha256"], len(row["delta"]), inline, oid))

        self._append(record.version, f"edit {record.id!r}", insert)
        self.deltas.spill(record, cached=True)

    def log_removal(self, edit_id: str, version: int) -> None:
        self._append(version, f"rollback of {edit_id!r}", lambda c: c.execute(
            "INSERT INTO memoir_log (seq, kind, edit_id, replica) VALUES (%s, 'rollback', %s, %s)",
            (version, edit_id, self.replica)))

    def _append(self, version: int, what: str, insert) -> None:
        if self._closed:
            raise StateError(f"the store of {self.where} is closed")
        try:
            if not self._writing:  # a caller that did not begin_write: wait for the lock here
                self._writer().execute("SELECT pg_advisory_xact_lock(%s)", (schema.WRITE_LOCK,))
                self._writing = True
            conn = self._wconn
            head = logrows.head(conn)
            if head != version - 1:
                self._abort()
                raise StateError(f"{what} would be version {version}, but the log is at {head}: this replica "
                                 "did not catch up before writing; it was not applied")
            insert(conn)
            conn.execute("SELECT pg_notify(%s, %s)", (schema.CHANNEL, str(version)))
            conn.commit()  # durable, the lock released, the followers notified
            self._writing = False
        except psycopg.Error as e:
            self._abort()
            raise DurabilityError(
                f"{self.where}: writing the {what} failed: {e}. It was not acknowledged; if the connection was lost "
                "during the commit it may still be in the log (the replicas apply it then): retry with the same "
                "edit id") from e
        self.version = version
        if self.snapshot_every and version % self.snapshot_every == 0:
            self._snapshot_soon()

    # -- snapshots ----------------------------------------------------------------------------
    def _snapshot_soon(self) -> None:
        if self._snap_thread is not None and self._snap_thread.is_alive():
            return
        self._snap_thread = threading.Thread(target=self.snapshot, name="memoir-pg-snapshot", daemon=True)
        self._snap_thread.start()

    def snapshot(self, every: int | None = None) -> int | None:
        """Write a snapshot at the head (when `every` entries came since the last) and compact.
        Observers (observe()) hear of each call."""
        with self._observers.timed():
            return self._snapshot(every)

    def observe(self, observer: SnapshotObserver) -> None:
        self._observers.add(observer)

    def stats(self) -> dict[str, float]:
        return {}

    def _snapshot(self, every: int | None) -> int | None:
        try:
            with self.connect() as conn:
                version = snapshots.write(conn, self.snapshot_every if every is None else every)
            if version is not None:
                log.info("%s: snapshot at version %d", self.where, version)
            return version
        except (psycopg.Error, DurabilityError) as e:  # the log still holds everything; the next one retries
            log.warning("%s: snapshot failed: %s", self.where, e)
            return None

    # -- shutdown -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in (self._wconn, self._init_conn):
            if conn is not None:
                try:
                    conn.close()  # an open write transaction is rolled back: nothing half-written
                except psycopg.Error:
                    pass
        with self._read_mu:
            self._drop_reader()
        if self._snap_thread is not None:
            self._snap_thread.join(10)
