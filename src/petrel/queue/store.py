"""`QueueStore`: what intake, delivery and queue administration need from the queue.

`Spool` (files under ``<data_dir>/queue``) and `petrel.queue.pg.PgStore` (one
PostgreSQL database shared by several nodes) implement it. The contract every backend
keeps:

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
- A store whose ``copier`` is set takes `Copies` along with a commit: files another
  stage writes (direct delivery's Maildir copies) made durable by the same sync
  rounds. A store without one (None) is never given any.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from petrel.queue.envelope import Envelope, Recipient

__all__ = ["Copier", "Copies", "CopyRound", "QueueStore", "QueueWriter", "StoreUnavailableError"]


class StoreUnavailableError(OSError):
    """The store cannot be reached just now (a database that is down): try again later.

    Intake answers it with ``451 4.3.0``; nothing was acknowledged.
    """


class Copies(Protocol):
    """Copies of one message for some of its recipients, written by another stage.

    After the round: ``failed`` are the recipients whose copy could not be written (the
    queue takes them instead), ``error`` is set if written copies may not be durable
    (the whole message then failed: nothing may be acknowledged).
    """

    @property
    def files(self) -> int:
        """How many files the copies are."""
        ...

    @property
    def failed(self) -> Sequence[Recipient]: ...

    @property
    def error(self) -> Exception | None: ...


class CopyRound(Protocol):
    """One commit batch's copies, in the commit thread: written, then published."""

    def discard(self, copies: Copies, error: Exception) -> None:
        """These copies' message failed (not durable, or its spool file could not be
        written): remove what was written for it; ``error`` becomes its error."""
        ...

    def publish(self) -> None:
        """The data is durable: make the copies not discarded visible, names durable."""
        ...

    def close(self) -> None: ...


class Copier(Protocol):
    """Writes `Copies` in a store's commit thread, sharing the store's sync rounds."""

    def write(self, batch: Sequence[Copies], per_file: bool, covered_dev: int) -> CopyRound:
        """Write every copy's data; fsync each file itself when ``per_file`` or when a
        syncfs of ``covered_dev`` (the file system the store syncs) does not cover it."""
        ...


class QueueWriter(Protocol):
    """One message being written; the store it came from commits it."""

    @property
    def queue_id(self) -> str: ...

    @property
    def envelope(self) -> Envelope:
        """What will be stored: as given to `QueueStore.begin`, less the recipients a
        commit's `Copies` took."""
        ...

    @property
    def size(self) -> int:
        """Message octets written so far."""
        ...

    @property
    def text(self) -> bytes | None:
        """The message text while the writer still holds it in memory, else None."""
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

    copier: Copier | None

    async def commit(self, writer: QueueWriter, copies: Copies | None = None) -> None:
        """Return once ``writer``'s message is durable; OSError if it could not be.

        With ``copies`` the message's envelope holds the recipients the queue keeps; the
        ``failed`` copies' recipients are added to it before it is stored. When none is
        left, nothing is stored (``writer.envelope.recipients`` says which case).
        """
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
