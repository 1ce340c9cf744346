"""The shared queue on PostgreSQL: `PgStore`, the ``[queue] backend = "postgresql"`` store.

Several Petrel nodes name one database (``[queue] dsn``) and each a distinct ``node``.
Every node receives: `PgStore.commit` puts the messages of concurrent sessions into
ONE transaction per batch (group commit, as the spool shares one sync) and returns only
after that transaction committed (``synchronous_commit`` on: with a synchronous standby
the 250 survives losing the primary). Every node delivers: an attempt first takes a
*lease* (`lease_due`: ``SELECT … FOR UPDATE SKIP LOCKED``, an expiry on the database
clock, and a fencing number that grows with every lease), so two nodes never try one
message at once; `record` refuses an outcome whose fencing number is no longer the
message's (`StaleLeaseError`: the lease expired and another node took it over). A node
killed mid-attempt loses nothing: its leases expire and another node retries.

Tables (``migrations/*.sql``, applied by `migrate`, ``petrel db migrate``):
``petrel_message`` (the envelope JSON as committed, hold, schedule, lease), its
``petrel_recipient`` rows (per-recipient state as JSON plus the columns queries need)
and ``petrel_chunk`` (the message bytes in rows of at most `CHUNK` octets). A body
larger than `CHUNK` is spilled to ``<data_dir>/queue/pg-spill/<id>`` while it arrives
and streamed into the transaction chunk by chunk, so no message is ever whole in memory.

Commits NOTIFY ``petrel_queue``: idle nodes wake on it (`Listener`), not by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import ConnectionPool

from petrel.config import Config
from petrel.fsutil import ensure_dir, unlink_quietly, write_all
from petrel.queue.admin import message_info
from petrel.queue.envelope import FINAL_STATES, Envelope, Recipient
from petrel.queue.ids import is_valid_queue_id
from petrel.queue.spool import HEADER_SCAN, CorruptMessageError
from petrel.queue.store import Copier, Copies, QueueStore, QueueWriter, StoreUnavailableError

__all__ = [
    "CHANNEL",
    "CHUNK",
    "LATEST_SCHEMA",
    "Lease",
    "Listener",
    "PgStore",
    "PgWriter",
    "SchemaError",
    "StaleLeaseError",
    "check_schema",
    "migrate",
    "open_store",
    "schema_version",
]

log = logging.getLogger("petrel.pg")
# psycopg_pool says every failed reconnect at WARNING; the store says it once, itself.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

CHANNEL = "petrel_queue"
CHUNK = 256 * 1024  # octets a petrel_chunk row holds; bodies up to this stay in memory
CONNECT_TIMEOUT = 5  # seconds: an unreachable database is an error, not a hang
POOL_TIMEOUT = 5.0  # seconds a reader waits for a connection before it gives up
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SchemaError(Exception):
    """The database has no Petrel schema, an older one, or one newer than this Petrel."""


class StaleLeaseError(OSError):
    """An outcome arrived under a lease that is no longer the message's: not recorded."""


# -- migrations -----------------------------------------------------------------------------


def _migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every migration shipped, in order: ``NNNN_name.sql``."""
    folder = resources.files("petrel.queue").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


LATEST_SCHEMA = _migrations()[-1][0]


def _connect(dsn: str) -> psycopg.Connection[Any]:
    """One autocommit connection; StoreUnavailableError in one line when it cannot be made."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise StoreUnavailableError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The version `migrate` left in ``petrel_schema``; 0 for a database without one."""
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'petrel_schema'"
    ).fetchone()
    if row is None or row[0] == 0:
        return 0
    found = conn.execute("SELECT version FROM petrel_schema WHERE id = 1").fetchone()
    return 0 if found is None else int(found[0])


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Refuse to serve on a database `migrate` has not brought to `LATEST_SCHEMA`."""
    version = schema_version(conn)
    if version == LATEST_SCHEMA:
        return
    if version > LATEST_SCHEMA:
        raise SchemaError(
            f"database schema version {version} is newer than this Petrel knows"
            f" ({LATEST_SCHEMA}): upgrade Petrel"
        )
    raise SchemaError(
        f"database schema version {version}, this Petrel needs {LATEST_SCHEMA}:"
        " run 'petrel db migrate'"
    )


def migrate(dsn: str, target: int | None = None) -> tuple[int, int]:
    """Bring the schema to ``target`` (default: the latest); returns (before, after).

    Idempotent; each version is one transaction, serialised by a row lock, so two
    nodes migrating at once apply each step once. A database at a newer version than
    this Petrel knows is refused (SchemaError), never touched.
    """
    migrations = _migrations()
    target = LATEST_SCHEMA if target is None else target
    conn = _connect(dsn)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS petrel_schema"
            " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO petrel_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING")
        before = schema_version(conn)
        if before > LATEST_SCHEMA:
            raise SchemaError(
                f"database schema version {before} is newer than this Petrel knows"
                f" ({LATEST_SCHEMA}): refusing to migrate"
            )
        for version, sql in migrations:
            if version > target:
                break
            with conn.transaction():
                row = conn.execute(
                    "SELECT version FROM petrel_schema WHERE id = 1 FOR UPDATE"
                ).fetchone()
                assert row is not None
                if int(row[0]) >= version:
                    continue
                conn.execute(sql.encode())
                conn.execute("UPDATE petrel_schema SET version = %s WHERE id = 1", (version,))
        return before, schema_version(conn)
    except psycopg.Error as exc:
        raise StoreUnavailableError(f"migration failed: {_one_line(exc)}") from None
    finally:
        conn.close()


# -- writing -------------------------------------------------------------------------------


class PgWriter:
    """One message being received: up to `CHUNK` octets in memory, more in a spill file.

    The envelope is serialised now; later changes to it are not stored (as the spool).
    Once handed to `PgStore.commit` the writer belongs to the store.
    """

    def __init__(self, envelope: Envelope, spill_path: str) -> None:
        self.envelope = envelope
        self.size = 0
        self.envelope_json = envelope.to_json()
        self.crc = 0
        self.buffer = bytearray()
        self.spill: int | None = None
        self._spill_path = spill_path
        self._closed = False
        self.handed_over = False

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id

    @property
    def text(self) -> bytes | None:
        """The message while it is all in memory (up to `CHUNK`), else None."""
        return None if self.spill is not None or self._closed else bytes(self.buffer)

    def write(self, data: bytes) -> None:
        if self._closed or self.handed_over:
            raise ValueError(f"message {self.queue_id} is already closed")
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        if self.spill is None and len(self.buffer) + len(data) <= CHUNK:
            self.buffer += data
            return
        if self.spill is None:
            self.spill = os.open(self._spill_path, _CREATE_FLAGS, 0o600)
            write_all(self.spill, self.buffer)
            self.buffer = bytearray()
        write_all(self.spill, data)

    def chunks(self) -> Iterator[bytes]:
        """The body in rows of at most `CHUNK` octets (read back from the spill file)."""
        if self.spill is None:
            yield bytes(self.buffer)
            return
        offset = 0
        while offset < self.size:
            chunk = os.pread(self.spill, min(CHUNK, self.size - offset), offset)
            if not chunk:
                raise OSError(f"spill file of {self.queue_id} is shorter than written")
            offset += len(chunk)
            yield chunk

    def abort(self) -> None:
        if not self.handed_over:
            self.discard()

    def discard(self) -> None:
        self._closed = True
        self.buffer = bytearray()
        if self.spill is not None:
            os.close(self.spill)
            self.spill = None
            unlink_quietly(self._spill_path)


class _GroupCommit:
    """The one committer: every writer queued while a batch commits joins the next
    batch, so concurrent sessions share one transaction. ``commit_batch`` runs on
    ``executor`` and returns, per writer, None (committed) or its caller's exception.

    A caller cancelled meanwhile does not stop the commit: a duplicate is better than a
    loss.
    """

    def __init__(self, commit_batch: Callable[[list[PgWriter]], list[Exception | None]]) -> None:
        self._commit_batch = commit_batch
        self._pending: list[tuple[PgWriter, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def commit(self, writer: PgWriter, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((writer, done))
        if self._task is None:
            self._task = loop.create_task(self._drain(executor))
        await done

    async def _drain(self, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                writers = [writer for writer, _ in batch]
                try:
                    results = await loop.run_in_executor(executor, self._commit_batch, writers)
                except asyncio.CancelledError:
                    for _, done in batch:
                        done.cancel()
                    raise
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, done), result in zip(batch, results, strict=True):
                    if done.done():
                        continue
                    if result is None:
                        done.set_result(None)
                    else:
                        done.set_exception(result)
        finally:
            self._task = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A message this node may attempt now, until the lease expires."""

    envelope: Envelope
    fence: int
    forced: bool  # flush/ETRN asked: every open recipient, due or not
    taken_over: bool  # an earlier lease expired unrecorded: that attempt may have delivered


# -- the store -----------------------------------------------------------------------------


def _next_attempt(envelope: Envelope) -> float | None:
    times = [r.next_attempt for r in envelope.recipients if not r.final]
    return min(times) if times else None


def _recipient_rows(envelope: Envelope) -> list[tuple[Any, ...]]:
    return [
        (
            envelope.queue_id,
            index,
            r.address,
            r.state,
            r.next_attempt,
            json.dumps(r.to_dict(), separators=(",", ":"), sort_keys=True),
        )
        for index, r in enumerate(envelope.recipients)
    ]


_INSERT_MESSAGE = (
    "INSERT INTO petrel_message (queue_id, envelope, received_at, body_size, body_crc,"
    " hold, next_attempt) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_RECIPIENT = (
    "INSERT INTO petrel_recipient (queue_id, idx, address, state, next_attempt, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
_UPDATE_RECIPIENT = (
    "UPDATE petrel_recipient SET address = %s, state = %s, next_attempt = %s, detail = %s"
    " WHERE queue_id = %s AND idx = %s"
)
_INSERT_CHUNK = "INSERT INTO petrel_chunk (queue_id, seq, data) VALUES (%s, %s, %s)"

# Due, unheld, not leased (or the lease ran out): take up to N, skipping rows another
# node's transaction has locked this instant, and lease them in the same statement.
_LEASE = """
WITH due AS (
    SELECT queue_id, forced, lease_node FROM petrel_message
    WHERE NOT hold AND NOT doomed AND next_attempt IS NOT NULL
      AND (forced OR next_attempt <= %(now)s)
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_attempt, queue_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE petrel_message AS m
SET lease_node = %(node)s, lease_until = now() + %(lease)s * interval '1 second',
    fence = m.fence + 1, forced = FALSE
FROM due WHERE m.queue_id = due.queue_id
RETURNING m.queue_id, m.fence, due.forced, due.lease_node
"""


class PgStore:
    """`QueueStore` on PostgreSQL, plus the cluster's leases and views.

    Methods other than `commit` block (delivery calls them from threads); any of them
    raises `StoreUnavailableError` (an ``OSError``) while the database cannot be reached.
    """

    # Direct delivery's Maildir copies would be node-local: the shared queue takes none.
    copier: Copier | None = None

    def __init__(self, dsn: str, node: str, lease: float, spill_dir: Path) -> None:
        self.dsn = dsn
        self.node = node
        self.lease = lease
        self.spill_dir = spill_dir
        self.commit_count = 0
        self.sync_count = 0  # transactions that committed a batch
        self._spill_prefix = f"{spill_dir}{os.sep}"
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._committer_conn: psycopg.Connection[Any] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._group = _GroupCommit(self._commit_batch)

    # -- life cycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Connect, check the schema (SchemaError), start the pool and the commit thread.

        StoreUnavailableError when the database cannot be reached.
        """
        conn = _connect(self.dsn)
        try:
            check_schema(conn)
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"PostgreSQL: {_one_line(exc)}") from None
        finally:
            conn.close()
        os.makedirs(self.spill_dir.parent, mode=0o700, exist_ok=True)
        ensure_dir(self.spill_dir)
        for name in os.listdir(self.spill_dir):  # never committed: nobody got a 250
            unlink_quietly(self.spill_dir / name)
        self._pool = ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=8,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            check=ConnectionPool.check_connection,
            timeout=POOL_TIMEOUT,
            name=f"petrel-{self.node}",
            open=True,
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="petrel-pg-commit")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._committer_conn is not None:
            self._committer_conn.close()
            self._committer_conn = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; database trouble becomes StoreUnavailableError/OSError."""
        if self._pool is None:
            raise RuntimeError("PgStore.open() was not called")
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailableError(f"PostgreSQL unavailable: {_one_line(exc)}") from None
        except psycopg.Error as exc:
            raise OSError(f"PostgreSQL: {_one_line(exc)}") from None

    # -- intake --------------------------------------------------------------------------

    def has_room(self, size: int = 0) -> bool:
        """The database's disk is not ours to watch: a full one fails the commit (4xx)."""
        return True

    def begin(self, envelope: Envelope) -> PgWriter:
        queue_id = _check_id(envelope.queue_id)
        return PgWriter(envelope, self._spill_prefix + queue_id)

    async def commit(self, writer: QueueWriter, copies: Copies | None = None) -> None:
        """Return once the transaction holding the message has committed.

        StoreUnavailableError when the database went away: nothing is acknowledged (the
        transaction may still have committed, in which case the message is delivered
        anyway: a duplicate is better than a loss).
        """
        if copies is not None:
            raise ValueError("the shared queue takes no copies: no copier is set")
        if not isinstance(writer, PgWriter):
            raise TypeError(f"not a writer of this store: {writer!r}")
        if self._executor is None:
            raise RuntimeError("PgStore.open() was not called")
        if writer.handed_over:
            raise ValueError(f"message {writer.queue_id} was already committed")
        writer.handed_over = True
        await self._group.commit(writer, self._executor)

    def _commit_batch(self, writers: list[PgWriter]) -> list[Exception | None]:
        """Commit thread: the whole batch in one transaction; alone only if it must.

        A message the database refuses on its own (a clashing id) would abort the batch's
        transaction: then each message is tried in a transaction of its own, so it alone
        fails. A lost connection fails the batch (StoreUnavailableError) and the next
        batch connects again.
        """
        try:
            try:
                self._insert(writers)
                return [None] * len(writers)
            except (psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailableError):
                raise
            except (psycopg.Error, OSError) as exc:
                if len(writers) == 1:
                    return [OSError(f"PostgreSQL refused the message: {_one_line(exc)}")]
            results: list[Exception | None] = []
            for writer in writers:
                try:
                    self._insert([writer])
                    results.append(None)
                except (psycopg.OperationalError, psycopg.InterfaceError, StoreUnavailableError):
                    raise
                except (psycopg.Error, OSError) as exc:
                    results.append(OSError(f"PostgreSQL refused the message: {_one_line(exc)}"))
            return results
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if self._committer_conn is not None:
                self._committer_conn.close()
                self._committer_conn = None
            error = StoreUnavailableError(f"PostgreSQL unavailable: {_one_line(exc)}")
            return [error] * len(writers)
        except StoreUnavailableError as exc:  # could not connect at all
            return [exc] * len(writers)
        finally:
            for writer in writers:
                writer.discard()

    def _insert(self, writers: list[PgWriter]) -> None:
        conn = self._committer_conn
        if conn is None or conn.closed or conn.broken:
            conn = self._committer_conn = _connect(self.dsn)
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                _INSERT_MESSAGE,
                [
                    (
                        w.queue_id,
                        w.envelope_json,
                        w.envelope.received_at,
                        w.size,
                        w.crc,
                        w.envelope.hold,
                        _next_attempt(w.envelope),
                    )
                    for w in writers
                ],
            )
            cur.executemany(
                _INSERT_RECIPIENT, [row for w in writers for row in _recipient_rows(w.envelope)]
            )
            small = [(w.queue_id, 0, bytes(w.buffer)) for w in writers if w.spill is None]
            if small:
                cur.executemany(_INSERT_CHUNK, small)
            for w in writers:
                if w.spill is not None:  # streamed row by row: never whole in memory
                    for seq, chunk in enumerate(w.chunks()):
                        cur.execute(_INSERT_CHUNK, (w.queue_id, seq, chunk))
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.node))
        self.commit_count += len(writers)
        self.sync_count += 1

    # -- start-up ------------------------------------------------------------------------

    def recover(self) -> list[Envelope]:
        """Nothing is node-local: the queue lives in the database and is leased from it."""
        return []

    # -- reading -------------------------------------------------------------------------

    def list_ids(self) -> list[str]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT queue_id FROM petrel_message ORDER BY received_at, queue_id"
            ).fetchall()
        return [row[0] for row in rows]

    def load(self, queue_id: str) -> Envelope:
        with self._conn() as conn:
            envelopes = self._load_many(conn, [_check_id(queue_id)])
        if not envelopes:
            raise FileNotFoundError(f"{queue_id}: no such message")
        return envelopes[0]

    @staticmethod
    def _load_many(conn: psycopg.Connection[Any], ids: list[str]) -> list[Envelope]:
        """The envelopes of ``ids`` (those still there) with their recipients' state."""
        messages = conn.execute(
            "SELECT queue_id, envelope, hold FROM petrel_message WHERE queue_id = ANY(%s)",
            (ids,),
        ).fetchall()
        details: dict[str, list[Recipient]] = {}
        for queue_id, detail in conn.execute(
            "SELECT queue_id, detail FROM petrel_recipient WHERE queue_id = ANY(%s)"
            " ORDER BY queue_id, idx",
            (ids,),
        ):
            details.setdefault(queue_id, []).append(Recipient.from_dict(json.loads(detail)))
        found = []
        for queue_id, envelope_json, hold in messages:
            try:
                envelope = Envelope.from_json(envelope_json)
            except ValueError as exc:
                raise CorruptMessageError(f"{queue_id}: bad envelope: {exc}") from None
            recipients = details.get(queue_id, [])
            if [r.address for r in recipients] == [r.address for r in envelope.recipients]:
                envelope.recipients = recipients
            envelope.hold = hold
            found.append(envelope)
        order = {queue_id: n for n, queue_id in enumerate(ids)}
        found.sort(key=lambda e: order[e.queue_id])
        return found

    def iter_body(self, queue_id: str) -> Generator[bytes, None, None]:
        """The message bytes, one row at a time; ValueError at the end if they are damaged.

        The first row comes with the size and checksum, so a small message costs one
        query; the rows after it are read until the size is reached.
        """
        _check_id(queue_id)
        with self._conn() as conn:
            row = conn.execute(
                "SELECT m.body_size, m.body_crc, c.data FROM petrel_message AS m"
                " LEFT JOIN petrel_chunk AS c ON c.queue_id = m.queue_id AND c.seq = 0"
                " WHERE m.queue_id = %s",
                (queue_id,),
            ).fetchone()
            if row is None:
                raise FileNotFoundError(f"{queue_id}: no such message")
            size, crc, data = int(row[0]), int(row[1]), row[2]
            seen = check = 0
            seq = 1
            while data is not None:
                chunk = bytes(data)
                seen += len(chunk)
                check = zlib.crc32(chunk, check)
                yield chunk
                if seen >= size:
                    break
                found = conn.execute(
                    "SELECT data FROM petrel_chunk WHERE queue_id = %s AND seq = %s",
                    (queue_id, seq),
                ).fetchone()
                data = None if found is None else found[0]
                seq += 1
        if seen != size or check != crc:
            raise CorruptMessageError(f"{queue_id}: message bytes do not match their checksum")

    def read_body(self, queue_id: str) -> bytes:
        return b"".join(self.iter_body(queue_id))

    def read_header(self, queue_id: str) -> bytes:
        head = b""
        with contextlib.closing(self.iter_body(queue_id)) as chunks:
            for chunk in chunks:
                head += chunk
                if b"\r\n\r\n" in head or len(head) >= HEADER_SCAN:
                    break
        end = head.find(b"\r\n\r\n")
        return head[: end + 4] if end >= 0 else head[:HEADER_SCAN]

    def body_size(self, queue_id: str) -> int:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT body_size FROM petrel_message WHERE queue_id = %s", (_check_id(queue_id),)
            ).fetchone()
        if row is None:
            raise FileNotFoundError(f"{queue_id}: no such message")
        return int(row[0])

    # -- delivery state ------------------------------------------------------------------

    def save_state(self, envelope: Envelope) -> None:
        """Recipients and hold, outside any lease (the offline path of the protocol)."""
        with self._conn() as conn, conn.transaction():
            self._write_state(conn, envelope)
            conn.execute(
                "UPDATE petrel_message SET hold = %s WHERE queue_id = %s",
                (envelope.hold, envelope.queue_id),
            )

    @staticmethod
    def _write_state(conn: psycopg.Connection[Any], envelope: Envelope) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                _UPDATE_RECIPIENT,
                [(a, s, n, d, q, i) for q, i, a, s, n, d in _recipient_rows(envelope)],
            )
            cur.execute(
                "UPDATE petrel_message SET next_attempt = %s WHERE queue_id = %s",
                (_next_attempt(envelope), envelope.queue_id),
            )

    def finish(self, queue_id: str) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM petrel_message WHERE queue_id = %s", (_check_id(queue_id),))

    # -- leases --------------------------------------------------------------------------

    def lease_due(self, now: float, limit: int) -> list[Lease]:
        """Lease up to ``limit`` due messages for this node (none another node holds)."""
        with self._conn() as conn, conn.transaction():
            taken = conn.execute(
                _LEASE, {"now": now, "limit": limit, "node": self.node, "lease": self.lease}
            ).fetchall()
            if not taken:
                return []
            envelopes = self._load_many(conn, [row[0] for row in taken])
        by_id = {row[0]: row for row in taken}
        return [
            Lease(
                envelope=e,
                fence=int(by_id[e.queue_id][1]),
                forced=bool(by_id[e.queue_id][2]),
                taken_over=by_id[e.queue_id][3] is not None,
            )
            for e in envelopes
        ]

    def renew(self, fences: dict[str, int]) -> int:
        """Extend this node's leases still in attempts; returns how many were still ours."""
        if not fences:
            return 0
        with self._conn() as conn, conn.cursor() as cur:
            cur.executemany(
                "UPDATE petrel_message SET lease_until = now() + %s * interval '1 second'"
                " WHERE queue_id = %s AND fence = %s AND lease_node = %s",
                [(self.lease, q, f, self.node) for q, f in fences.items()],
            )
            return max(cur.rowcount, 0)

    def record(self, envelope: Envelope, fence: int) -> bool:
        """One attempt's outcome (`record_many`); StaleLeaseError if the lease is not it."""
        gone, stale = self.record_many([(envelope, fence)])
        if stale:
            raise StaleLeaseError(stale[0])
        return bool(gone)

    def record_many(self, outcomes: list[tuple[Envelope, int]]) -> tuple[list[str], list[str]]:
        """Attempts' outcomes, each under its lease's fencing number, in one transaction.

        A message whose recipients are all final (or that an operator deleted meanwhile)
        leaves the queue; the others get their new state and their lease released. An
        outcome whose lease is no longer the message's (it expired and another node took
        the message over) is not recorded. Returns (ids gone, why each stale one was
        refused).
        """
        if not outcomes:
            return [], []
        ids = [_check_id(envelope.queue_id) for envelope, _ in outcomes]
        with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            current = {
                queue_id: (int(fence), bool(doomed))
                for queue_id, fence, doomed in cur.execute(
                    "SELECT queue_id, fence, doomed FROM petrel_message"
                    " WHERE queue_id = ANY(%s) AND lease_node = %s FOR UPDATE",
                    (ids, self.node),
                ).fetchall()
            }
            gone: list[str] = []
            kept: list[Envelope] = []
            stale: list[str] = []
            for envelope, fence in outcomes:
                queue_id = envelope.queue_id
                found = current.get(queue_id)
                if found is None or found[0] != fence:
                    stale.append(
                        f"{queue_id}: lease {fence} of {self.node} is no longer valid (it"
                        " expired and another node took the message over): outcome not recorded"
                    )
                elif found[1] or envelope.all_final:
                    gone.append(queue_id)
                else:
                    kept.append(envelope)
            if gone:
                cur.execute("DELETE FROM petrel_message WHERE queue_id = ANY(%s)", (gone,))
            if kept:
                cur.executemany(
                    _UPDATE_RECIPIENT,
                    [
                        (a, s, n, d, q, i)
                        for envelope in kept
                        for q, i, a, s, n, d in _recipient_rows(envelope)
                    ],
                )
                cur.executemany(
                    "UPDATE petrel_message SET next_attempt = %s, lease_node = NULL,"
                    " lease_until = NULL WHERE queue_id = %s",
                    [(_next_attempt(e), e.queue_id) for e in kept],
                )
        return gone, stale

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until something may be due here: an open recipient or a lease expiry."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT min(next_attempt) FILTER (WHERE NOT hold AND lease_until IS NULL),"
                " extract(epoch FROM min(lease_until) - now())"
                " FROM petrel_message WHERE next_attempt IS NOT NULL"
            ).fetchone()
        if row is None:
            return None
        waits = []
        if row[0] is not None:
            waits.append(float(row[0]) - now)
        if row[1] is not None:
            waits.append(float(row[1]) + 0.05)  # just past the expiry
        return max(0.0, min(waits)) if waits else None

    # -- the cluster's views and controls (petrel queue, ETRN, petrel status) -------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Every message with its recipients and live lease, oldest first."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT queue_id, body_size, lease_node,"
                " extract(epoch FROM lease_until), lease_until > now()"
                " FROM petrel_message ORDER BY received_at, queue_id"
            ).fetchall()
            envelopes = {e.queue_id: e for e in self._load_many(conn, [r[0] for r in rows])}
        infos = []
        for queue_id, size, node, until, live in rows:
            envelope = envelopes.get(queue_id)
            if envelope is None:
                continue
            info = message_info(envelope, int(size), active=bool(live))
            if live:
                info["lease"] = {"node": node, "until": float(until)}
            infos.append(info)
        return infos

    def lease_of(self, queue_id: str) -> dict[str, Any] | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT lease_node, extract(epoch FROM lease_until) FROM petrel_message"
                " WHERE queue_id = %s AND lease_until > now()",
                (_check_id(queue_id),),
            ).fetchone()
        return None if row is None else {"node": row[0], "until": float(row[1])}

    def set_hold(self, queue_id: str, hold: bool) -> bool | None:
        """True if changed, False if it was so already, None if there is no such message."""
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "SELECT hold FROM petrel_message WHERE queue_id = %s FOR UPDATE",
                (_check_id(queue_id),),
            ).fetchone()
            if row is None:
                return None
            if bool(row[0]) == hold:
                return False
            conn.execute(
                "UPDATE petrel_message SET hold = %s WHERE queue_id = %s", (hold, queue_id)
            )
            if not hold:  # released: due again, perhaps at once
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.node))
        return True

    def force(self, ids: Iterable[str]) -> int:
        """Mark messages to be tried now, every open recipient (flush, ETRN); wakes nodes."""
        wanted = list(ids)
        if not wanted:
            return 0
        with self._conn() as conn, conn.transaction():
            count = conn.execute(
                "UPDATE petrel_message SET forced = TRUE WHERE queue_id = ANY(%s) AND NOT hold",
                (wanted,),
            ).rowcount
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.node))
        return max(count, 0)

    def open_recipients(self) -> list[tuple[str, str]]:
        """(queue id, address) of every open recipient of every unheld message."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT r.queue_id, r.address FROM petrel_recipient AS r"
                " JOIN petrel_message AS m ON m.queue_id = r.queue_id"
                " WHERE NOT m.hold AND r.state <> ALL(%s)",
                (sorted(FINAL_STATES),),
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def delete(self, queue_id: str) -> bool | None:
        """Removed now (True), when its attempt ends (False: leased), or no such one (None)."""
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE petrel_message SET doomed = TRUE WHERE queue_id = %s"
                " RETURNING lease_until IS NOT NULL AND lease_until > now()",
                (_check_id(queue_id),),
            ).fetchone()
            if row is None:
                return None
            if row[0]:
                return False
            conn.execute("DELETE FROM petrel_message WHERE queue_id = %s", (queue_id,))
        return True

    def counts(self) -> dict[str, Any]:
        """`petrel status`: messages by state across the cluster, and leases by node."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE hold),"
                " count(*) FILTER (WHERE NOT hold AND lease_until > now()),"
                " count(*) FILTER (WHERE NOT hold AND (lease_until IS NULL OR lease_until <= now())"
                "   AND EXISTS (SELECT 1 FROM petrel_recipient AS r"
                "     WHERE r.queue_id = m.queue_id AND r.state = 'deferred'))"
                " FROM petrel_message AS m"
            ).fetchone()
            leases = conn.execute(
                "SELECT lease_node, count(*) FROM petrel_message WHERE lease_until > now()"
                " GROUP BY lease_node ORDER BY lease_node"
            ).fetchall()
        assert row is not None
        total, hold, active, deferred = (int(v) for v in row)
        return {
            "total": total,
            "queued": total - hold - active - deferred,
            "active": active,
            "deferred": deferred,
            "hold": hold,
            "leases": {node: int(n) for node, n in leases},
        }


def _check_id(queue_id: str) -> str:
    if not is_valid_queue_id(queue_id):
        raise ValueError(f"not a queue id: {queue_id!r}")
    return queue_id


class Listener:
    """LISTEN ``petrel_queue`` on a connection of its own; calls ``wake`` per NOTIFY.

    When the connection is lost it reconnects (1 s, doubling to 30 s) and wakes once,
    since a notification may have been missed meanwhile.
    """

    def __init__(self, dsn: str, wake: Any) -> None:
        self.dsn = dsn
        self.wake = wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                )
            except psycopg.Error:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                delay = 1.0
                self.wake()
                async for _ in conn.notifies():
                    self.wake()
            except psycopg.Error:
                pass
            finally:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            await asyncio.sleep(delay)


def open_store(config: Config) -> PgStore:
    """The configured shared queue, opened: StoreUnavailableError or SchemaError if not."""
    queue = config.queue
    spill = config.server.data_dir / "queue" / "pg-spill"
    store = PgStore(queue.dsn, queue.node, queue.lease, spill)
    store.open()
    return store


if TYPE_CHECKING:  # PgStore is a QueueStore; mypy checks it here
    _store: QueueStore = PgStore("", "", 0.0, Path())
