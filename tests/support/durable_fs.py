"""A crash simulator for the state store: it wraps memoir_core.store.fsio, counts every call
that changes the disk, stops the program at a chosen one, and rebuilds the directory as a
power cut would leave it.

What survives is modelled strictly: a file's content only as of its last fsync, a directory
entry (create, rename, unlink) only as of its directory's last fsync. kill -9 cannot show a
missing fsync (the page cache survives it); this can.
"""

from __future__ import annotations

import os
import random
import shutil

from memoir_core.store import fsio

COUNTED = ("create", "write_all", "pwrite", "fsync", "fsync_dir", "truncate", "replace", "mkdir", "unlink", "rmtree")


class Crash(BaseException):
    """Not an Exception: the store's error handling must not see it (a real crash runs nothing)."""


class DurableFS:
    def __init__(self, root: str, crash_at: int | None = None):
        self.root = os.path.abspath(root)
        self.crash_at = crash_at
        self.ops = 0
        self.gen: dict[int, int] = {}  # inode -> generation (inode numbers are reused)
        self.data: dict[tuple[int, int], bytes] = {}
        self.dirs: dict[tuple[int, int], dict[str, tuple[int, int]]] = {}
        self.kinds: dict[tuple[int, int], str] = {}
        self._snapshot_tree(self.root)  # what exists before counts as durable

    def key(self, ino: int) -> tuple[int, int]:
        return ino, self.gen.get(ino, 0)

    def _snapshot_tree(self, path: str) -> None:
        self._record_dir(path)
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                self._snapshot_tree(entry.path)
            else:
                k = self.key(entry.inode())
                self.kinds[k] = "file"
                with open(entry.path, "rb") as f:
                    self.data[k] = f.read()

    def _record_dir(self, path: str) -> None:
        k = self.key(os.stat(path).st_ino)
        self.kinds[k] = "dir"
        listing = {}
        for entry in os.scandir(path):
            ek = self.key(entry.inode())
            self.kinds.setdefault(ek, "dir" if entry.is_dir(follow_symlinks=False) else "file")
            listing[entry.name] = ek
        self.dirs[k] = listing

    # -- the wrapped calls ---------------------------------------------------------------------
    def _tick(self) -> None:
        self.ops += 1
        if self.crash_at is not None and self.ops >= self.crash_at:
            raise Crash(self.ops)

    def install(self, monkeypatch) -> None:
        real = {name: getattr(fsio, name) for name in COUNTED}

        def counted(name):
            def call(*args):
                self._tick()
                result = real[name](*args)
                after = getattr(self, f"_after_{name}", None)
                if after is not None:
                    after(result, *args)
                return result
            return call

        for name in COUNTED:
            monkeypatch.setattr(fsio, name, counted(name))

    def _new_inode(self, ino: int, kind: str) -> None:
        self.gen[ino] = self.gen.get(ino, 0) + 1
        self.kinds[self.key(ino)] = kind

    def _after_create(self, fd: int, path: str) -> None:
        self._new_inode(os.fstat(fd).st_ino, "file")

    def _after_mkdir(self, _, path: str) -> None:
        self._new_inode(os.stat(path).st_ino, "dir")

    def _after_fsync(self, _, fd: int) -> None:
        k = self.key(os.fstat(fd).st_ino)
        with open(os.readlink(f"/proc/self/fd/{fd}"), "rb") as f:
            self.data[k] = f.read()

    def _after_fsync_dir(self, _, path: str) -> None:
        self._record_dir(path)

    # -- after the crash ---------------------------------------------------------------------
    def materialize(self, target: str, mode: str = "drop", seed: int = 0) -> None:
        """Write the directory as it would be after the crash.

        drop: only what was fsynced. keep: everything (a process crash: the page cache survives).
        tear: what was fsynced, plus a random part of the bytes appended since to a durable file.
        """
        if mode == "keep":
            shutil.copytree(self.root, target, ignore=shutil.ignore_patterns("LOCK"))
            return
        rng = random.Random(seed)
        live = self._live_files(self.root) if mode == "tear" else {}
        os.makedirs(target)
        self._write_dir(self.key(os.stat(self.root).st_ino), target, rng, live)

    def _live_files(self, path: str) -> dict[tuple[int, int], str]:
        found = {}
        for dirpath, _, files in os.walk(path):
            for name in files:
                p = os.path.join(dirpath, name)
                found[self.key(os.stat(p).st_ino)] = p
        return found

    def _write_dir(self, k, target: str, rng: random.Random, live) -> None:
        for name, ek in self.dirs.get(k, {}).items():
            path = os.path.join(target, name)
            if self.kinds.get(ek) == "dir":
                os.makedirs(path)
                self._write_dir(ek, path, rng, live)
                continue
            data = self.data.get(ek, b"")
            if ek in live:
                with open(live[ek], "rb") as f:
                    now = f.read()
                if len(now) > len(data) and now.startswith(data):
                    data = now[: len(data) + rng.randint(0, len(now) - len(data))]
            with open(path, "wb") as f:
                f.write(data)
