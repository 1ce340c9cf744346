"""`QueueStore`: what intake, delivery and queue administration need from the queue.

`Spool` (files under ``<data_dir>/queue``) and `petrel.queue.pg.PgStore` (one
PostgreSQL database shared by several nodes) implement it. The contract every backend keeps:

- `begin` hands out a `QueueWriter`; `commit` returns only once the message is on
  stable storage (the 250 waits for it) and raises ``OSError`` if it could not be put
  there (`StoreUnavailableError` when the store is out of reach for now). A committed
  message is recovered after any crash.
- Reads raise ``OSError`` for a message that cannot be read (``FileNotFoundError`` for
  one that is gone) and ``ValueError`` (`CorruptMessageError`) for a damaged one.
- `save_state` records the recipients' delivery state and ``hold`` atomically but need
  not be durable: after a crash an older state may come back (an attempt is repeated,
  none is lost). `finish` removes a message for good.
- Methods other than `commit` may block: delivery calls them from worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Generic, Protocol, TypeVar

from petrel.queue.envelope import Envelope

__all__ = ["GroupCommit", "QueueStore", "QueueWriter", "StoreUnavailableError"]


class StoreUnavailableError(OSError):
    """The store cannot be reached just now (a database that is down): try again later.

    Intake answers it with ``451 4.3.0``; nothing was acknowledged.
    """


class QueueWriter(Protocol):
    """One message being written; the store it came from commits it."""

    @property
    def queue_id(self) -> str: ...

    @property
    def envelope(self) -> Envelope:
        """As given to `QueueStore.begin` (later changes to it are not stored)."""
        ...

    @property
    def size(self) -> int:
        """Message octets written so far."""
        ...

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


class QueueStore(Protocol):
    """The durable queue, as intake, the queue manager and `petrel queue` use it."""

    # -- intake --------------------------------------------------------------------
    def has_room(self, size: int = 0) -> bool:
        """Room for a message of ``size`` octets now (the free-space floor)?"""
        ...

    def begin(self, envelope: Envelope) -> QueueWriter: ...

    async def commit(self, writer: QueueWriter) -> None:
        """Return once ``writer``'s message is durable; OSError if it could not be."""
        ...

    # -- start-up ------------------------------------------------------------------
    def recover(self) -> list[Envelope]:
        """Every committed message with its state, oldest first (damaged ones set aside)."""
        ...

    # -- reading -------------------------------------------------------------------
    def list_ids(self) -> list[str]: ...

    def load(self, queue_id: str) -> Envelope: ...

    def read_body(self, queue_id: str) -> bytes: ...

    def iter_body(self, queue_id: str) -> Iterator[bytes]:
        """The message bytes in chunks; ValueError at the end if they are damaged."""
        ...

    def read_header(self, queue_id: str) -> bytes:
        """The header section with its blank line (not checked for damage)."""
        ...

    def body_size(self, queue_id: str) -> int: ...

    # -- delivery state ------------------------------------------------------------
    def save_state(self, envelope: Envelope) -> None: ...

    def finish(self, queue_id: str) -> None: ...


W = TypeVar("W")


class GroupCommit(Generic[W]):
    """The one committer of a store: every writer queued while a batch commits joins the
    next batch, so concurrent sessions share one sync round (the spool) or one
    transaction (PostgreSQL). ``commit_batch`` runs on ``executor`` and returns, per
    writer, None (durable) or the exception its caller gets.

    A caller cancelled meanwhile does not stop the commit: a duplicate is better than a
    loss.
    """

    def __init__(self, commit_batch: Callable[[list[W]], list[Exception | None]]) -> None:
        self._commit_batch = commit_batch
        self._pending: list[tuple[W, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def commit(self, writer: W, executor: Executor) -> None:
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
