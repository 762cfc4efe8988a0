"""The durable memory store: a state directory with a write-ahead journal and snapshots."""

from .directory import DirectoryStore

__all__ = ["DirectoryStore"]
