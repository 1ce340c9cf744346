"""`PgStore` against the real private PostgreSQL: group commit, chunked bodies, leases
and the fencing number that keeps a node whose lease expired from recording."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import wait_until
from petrel.queue.envelope import DELIVERED, Envelope, Recipient
from petrel.queue.ids import new_queue_id
from petrel.queue.pg import CHUNK, PgStore, StaleLeaseError, migrate


@pytest.fixture
def stores(pg_dsn: str, tmp_path: Path) -> Iterator[Callable[..., PgStore]]:
    migrate(pg_dsn)
    opened: list[PgStore] = []

    def make(node: str, lease: float = 30.0) -> PgStore:
        store = PgStore(pg_dsn, node, lease, tmp_path / node / "spill")
        store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def envelope(*recipients: str) -> Envelope:
    return Envelope(new_queue_id(), "alice@a.test", [Recipient(r) for r in recipients], time.time())


def commit_all(store: PgStore, bodies: list[bytes]) -> list[str]:
    async def run() -> list[str]:
        writers = []
        for body in bodies:
            writer = store.begin(envelope("bob@b.test", "carol@c.test"))
            for start in range(0, len(body), 65536):
                writer.write(body[start : start + 65536])
            writers.append(writer)
        await asyncio.gather(*(store.commit(w) for w in writers))
        return [w.queue_id for w in writers]

    return asyncio.run(run())


def test_concurrent_commits_share_one_transaction(stores: Callable[..., PgStore]) -> None:
    store = stores("a")
    ids = commit_all(store, [b"Subject: %d\r\n\r\nhi\r\n" % i for i in range(20)])
    assert store.sync_count == 1 and store.commit_count == 20
    assert sorted(store.list_ids()) == sorted(ids)
    assert store.read_body(ids[3]) == b"Subject: 3\r\n\r\nhi\r\n"


def test_a_large_body_is_stored_in_chunks_and_checked(
    stores: Callable[..., PgStore], pg_dsn: str
) -> None:
    store = stores("a")
    body = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * (CHUNK // 16 * 5 + 7)
    [queue_id] = commit_all(store, [body])
    with psycopg.connect(pg_dsn) as conn:
        sizes = [n for (n,) in conn.execute(
            "SELECT length(data) FROM petrel_chunk WHERE queue_id = %s ORDER BY seq", (queue_id,)
        )]
    assert len(sizes) == 6 and max(sizes) <= CHUNK and sum(sizes) == len(body)
    assert store.body_size(queue_id) == len(body)
    assert b"".join(store.iter_body(queue_id)) == body
    assert store.read_header(queue_id) == b"Subject: big\r\n\r\n"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE petrel_chunk SET data = %s WHERE queue_id = %s AND seq = 2",
            (b"x" * CHUNK, queue_id),
        )
    with pytest.raises(ValueError, match="checksum"):
        b"".join(store.iter_body(queue_id))


def test_a_stale_lease_cannot_record_its_outcome(stores: Callable[..., PgStore]) -> None:
    a, b = stores("node-a", lease=1.0), stores("node-b", lease=30.0)
    [queue_id] = commit_all(a, [b"Subject: x\r\n\r\nx\r\n"])
    [lease_a] = a.lease_due(time.time(), 10)
    assert b.lease_due(time.time(), 10) == []  # leased: nobody else may try it
    leases = wait_until(lambda: b.lease_due(time.time(), 10), 15, "node A's lease to expire")
    assert isinstance(leases, list)
    [lease_b] = leases
    assert lease_b.fence == lease_a.fence + 1 and lease_b.taken_over
    done = lease_a.envelope
    for r in done.recipients:
        r.state = DELIVERED
    with pytest.raises(StaleLeaseError, match="no longer valid"):
        a.record(done, lease_a.fence)
    assert b.list_ids() == [queue_id]  # A's stale "delivered" changed nothing
    later = lease_b.envelope
    for r in later.recipients:
        r.state, r.next_attempt = "deferred", time.time() + 3600
    assert b.record(later, lease_b.fence) is False  # kept, lease released
    assert [r.state for r in b.load(queue_id).recipients] == ["deferred", "deferred"]
    assert a.lease_due(time.time(), 10) == []  # not due for an hour
    assert a.force([queue_id]) == 1  # a flush: due now, once
    [forced] = a.lease_due(time.time(), 10)
    assert forced.forced and not forced.taken_over


def test_two_nodes_leasing_at_once_never_share_a_message(stores: Callable[..., PgStore]) -> None:
    a, b = stores("node-a"), stores("node-b")
    ids = commit_all(a, [b"Subject: %d\r\n\r\n" % i for i in range(60)])
    taken: dict[str, list[str]] = {"node-a": [], "node-b": []}

    def drain(store: PgStore) -> None:
        for _ in range(200):
            leases = store.lease_due(time.time(), 3)
            taken[store.node].extend(lease.envelope.queue_id for lease in leases)
            if sum(len(v) for v in taken.values()) >= len(ids):
                return

    threads = [threading.Thread(target=drain, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not set(taken["node-a"]) & set(taken["node-b"])
    assert sorted(taken["node-a"] + taken["node-b"]) == sorted(ids)
    assert a.counts()["leases"] == {k: len(v) for k, v in taken.items() if v}


def test_a_renewed_lease_outlives_its_length_and_then_expires(
    stores: Callable[..., PgStore],
) -> None:
    a, b = stores("node-a", lease=3.0), stores("node-b")
    [queue_id] = commit_all(a, [b"Subject: long\r\n\r\nx\r\n"])
    [lease] = a.lease_due(time.time(), 10)
    deadline = time.monotonic() + 4.5  # longer than the lease: only renewals keep it
    while time.monotonic() < deadline:
        assert a.renew({queue_id: lease.fence}) == 1
        assert b.lease_due(time.time(), 10) == []  # a long attempt is never taken over
        time.sleep(0.3)
    taken = wait_until(lambda: b.lease_due(time.time(), 10), 15, "the lease to run out")
    assert isinstance(taken, list) and taken[0].taken_over
    assert a.renew({queue_id: lease.fence}) == 0  # no longer A's to renew
