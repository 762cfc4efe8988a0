"""The memory in PostgreSQL: one ordered edit log that many replicas follow (docs/replicas.md).

Needs psycopg 3 (`pip install 'memoir[postgres]'`); the state directory needs nothing of this.
"""

from .store import PostgresStore

__all__ = ["PostgresStore"]
