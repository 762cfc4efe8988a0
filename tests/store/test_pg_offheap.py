"""PostgreSQL mode keeps stored deltas in the database (store/postgres/fetch.py): a restart
holds none in RAM, a rollback fetches one and is bit-exact."""

from __future__ import annotations

import pytest
import torch

from memoir_core.memoir import EditProposal
from memoir_core.state import Manifest, restore
from tests.store.test_state_offheap import assert_same_memory, replayed, synthetic
from tests.support.pg_support import pg_url  # noqa: F401
from tests.support.tiny import make_memoir

pytest.importorskip("psycopg")
from memoir_core.store.postgres import PostgresStore  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_a_postgres_memory_holds_no_delta_in_ram_and_rolls_back_exactly(pg_url):  # noqa: F811
    store = PostgresStore(pg_url, replica="writer")
    assert store.load() is None
    m = make_memoir()
    store.create(Manifest.of(m, "tiny", "f" * 32), m.basis)
    for i in range(12):
        if i == 8:
            assert store.snapshot(every=1) == 8  # the restart reads a snapshot's edits, then a log tail
        rec = synthetic(m, i)
        assert store.begin_write(m.version) == []
        rec.version = m.version + 1
        store.log_edit(rec)
        m.commit(EditProposal(rec, None))
    assert store.deltas.fetched == 0  # applied from the cache the write left
    assert not any(isinstance(r.stored("delta"), torch.Tensor) for r in m.edits.values())
    store.close()

    again = PostgresStore(pg_url, replica="restart")
    loaded = again.load()
    k = m.config.k
    assert all(r.held_bytes() == 2 * k + 2 * 4 * k for r in loaded.edits)  # mask and guard inputs, no delta
    fresh = make_memoir()
    restore(fresh.memory, loaded)
    assert_same_memory(fresh, m)
    assert again.deltas.fetched == 0  # W_m came from the sum made while reading
    again.log_removal("e0", fresh.version + 1)
    fresh.remove("e0")
    assert again.deltas.fetched == 1
    assert_same_memory(fresh, replayed(list(fresh.edits.values())))
    again.close()
