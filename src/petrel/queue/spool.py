"""The durable spool: group-committed message files under ``<data_dir>/queue/``.

Layout (directories 0700, files 0600)::

    incoming/<id>   being written; never trusted, emptied at start-up
    active/<id>     committed messages, immutable once renamed here
    state/<id>      per-recipient delivery state, replaced atomically
    corrupt/<id>    files that failed validation, kept for the operator, never delivered

A message file is ``PETREL1 <json-length>\\n``, the envelope JSON, ``\\n``, the raw
message bytes, then ``\\nPETREL-END <body-length> <crc32-hex>\\n``. The CRC covers
everything before the trailer, so a file cut short or damaged anywhere fails
validation.

Durability: a writer fills ``incoming/<id>`` (a small message only in memory, until
the commit thread creates its file); `Spool.commit` queues it for the one
committer task, which in a worker thread seals every queued file, renames it to
``active/`` and then makes the whole batch durable at once: ONE syncfs(2), or for a
batch of one or two files an fsync of each plus one of ``active/``. Each caller returns
only after the sync that covered its own file; meanwhile new commits gather for
the next batch. A crash before that sync can leave a renamed but partial file in
``active/``; that message was never acknowledged, and recovery quarantines it.

Several processes may share a spool: ids are claimed by the O_EXCL create in
``incoming/`` and checked against ``active/`` before the rename, and renames are
atomic. Only `Spool.recover` must run alone, before any writer starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import re
import stat
import time
import zlib
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from petrel import metrics
from petrel.fsutil import (
    HAVE_SYNCFS,
    PER_FILE_SYNC_MAX,
    ensure_dir,
    fsync_dir,
    open_dir,
    syncfs,
    unlink_quietly,
    write_all,
)
from petrel.log import log_event
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.ids import is_valid_queue_id
from petrel.queue.store import Copier, Copies, CopyRound, QueueStore, QueueWriter

__all__ = ["HEADER_SCAN", "CorruptMessageError", "MessageWriter", "Spool"]

logger = logging.getLogger(__name__)

_HEADER_RE = re.compile(rb"PETREL1 ([1-9][0-9]{0,8})\n")
_TRAILER_START = b"\nPETREL-END "
_TRAILER_RE = re.compile(rb"\nPETREL-END (0|[1-9][0-9]{0,19}) ([0-9a-f]{8})\n")
_HEADER_MAX = 18  # "PETREL1 " + 9 digits + "\n"
_TRAILER_MAX = 42  # "\nPETREL-END " + 20 digits + " " + 8 hex + "\n"
_BUFFER_LIMIT = 256 * 1024  # bodies up to this stay in memory until commit
# The most of a message's start read as its header section (when no blank line ends it
# sooner): for hop counting, submission fix-ups, notices and `petrel queue show`.
HEADER_SCAN = 256 * 1024
_READ_CHUNK = 1 << 20
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

_tmp_counter = itertools.count()

# Below this much free space the spool takes no new mail (Postfix's queue_minfree): a
# client hears 452 4.3.1 at MAIL instead of after sending a message that cannot fit.
MIN_FREE = 256 * 1024
_FREE_SPACE_TTL = 1.0  # seconds a free-space reading is reused: MAIL is a hot path


class CorruptMessageError(ValueError):
    """A spool file failed validation: wrong shape, length or checksum."""


@dataclass(frozen=True)
class _Layout:
    """Where the parts of a message file lie, as read from its header and trailer."""

    prefix: bytes  # header line + envelope JSON + "\n": the CRC starts here
    body_length: int
    crc: int

    @property
    def envelope_json(self) -> bytes:
        return self.prefix[self.prefix.index(b"\n") + 1 : -1]


def _read_layout(fd: int, size: int) -> _Layout:
    """Parse header and trailer and check that the lengths add up to the file size."""
    header = _HEADER_RE.match(os.pread(fd, _HEADER_MAX, 0))
    if header is None:
        raise CorruptMessageError("bad header")
    prefix_length = header.end() + int(header[1]) + 1
    tail_length = min(size, _TRAILER_MAX)
    tail = os.pread(fd, tail_length, size - tail_length)
    start = tail.rfind(_TRAILER_START)
    trailer = _TRAILER_RE.fullmatch(tail, start) if start >= 0 else None
    if trailer is None:
        raise CorruptMessageError("no trailer")
    body_length = int(trailer[1])
    if prefix_length + body_length + len(tail) - start != size:
        raise CorruptMessageError("length does not match the file size")
    prefix = os.pread(fd, prefix_length, 0)
    if len(prefix) != prefix_length or not prefix.endswith(b"\n"):
        raise CorruptMessageError("envelope not terminated")
    return _Layout(prefix, body_length, int(trailer[2], 16))


def _iter_body(fd: int, layout: _Layout, chunk_size: int) -> Iterator[bytes]:
    """Yield the body in chunks; raise CorruptMessageError at the end if the CRC is wrong."""
    crc = zlib.crc32(layout.prefix)
    offset = len(layout.prefix)
    end = offset + layout.body_length
    while offset < end:
        chunk = os.pread(fd, min(chunk_size, end - offset), offset)
        if not chunk:
            raise CorruptMessageError("file shorter than its trailer says")
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
        yield chunk
    if crc != layout.crc:
        raise CorruptMessageError("checksum mismatch")


def _open_regular(path: str | Path) -> tuple[int, int]:
    """Open a spool file for reading without following symlinks; return (fd, size)."""
    fd = os.open(path, _READ_FLAGS)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CorruptMessageError("not a regular file")
    return fd, st.st_size


class MessageWriter:
    """One message being written to ``incoming/``: `write` the body, then commit or `abort`.

    Up to 256 KiB of text stays in memory, and the file is created only when the body
    grows past that or, for the usual small message, by the commit thread: the event
    loop then makes no system call that could wait on the file system's journal. The
    envelope is serialised when the file is first written: for a message still in
    memory at commit, that is in the commit thread, so intake may still take
    recipients out of it (direct delivery, `Copies`). Once handed to `Spool.commit` the
    writer belongs to the spool: `abort` is then a no-op, so a client vanishing
    mid-commit cannot pull the file away.
    """

    def __init__(self, envelope: Envelope, incoming: str, active: str) -> None:
        self.envelope = envelope
        self.size = 0  # body bytes written so far
        self._fd: int | None = None
        self._owns_incoming = False  # incoming/<id> was created by us and not yet renamed
        self._closed = False
        self._incoming = incoming
        self._active = active
        self._handed_over = False
        self._held: bytearray | None = bytearray()  # the text while in memory
        self._crc = 0  # of what is in the file: valid once the text is there

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id

    @property
    def text(self) -> bytes | None:
        """The message text while it is still held in memory (None once on disk)."""
        return None if self._held is None else bytes(self._held)

    def write(self, data: bytes) -> None:
        """Append body bytes exactly as received (CRLF line ends, dot-unstuffed).

        After an error (e.g. ENOSPC) the file is unusable: `abort` it.
        """
        if self._closed or self._handed_over:
            raise ValueError(f"message {self.queue_id} is already closed")
        self.size += len(data)
        held = self._held
        if held is not None:
            if len(held) + len(data) <= _BUFFER_LIMIT:
                held += data
                return
            self._spill()
        self._crc = zlib.crc32(data, self._crc)
        write_all(self._file(), data)

    def abort(self) -> None:
        """Close and remove the unfinished file; safe to call more than once."""
        if not self._handed_over:
            self._discard()

    def _prefix(self) -> bytes:
        envelope_json = self.envelope.to_json().encode("ascii")
        return b"PETREL1 %d\n%s\n" % (len(envelope_json), envelope_json)

    def _spill(self) -> None:
        """Move the held text into the file: envelope first, the rest is appended."""
        held, self._held = self._held, None
        assert held is not None
        prefix = self._prefix()
        self._crc = zlib.crc32(held, zlib.crc32(prefix))
        _write_parts(self._file(), [prefix, held])

    def _file(self) -> int:
        """The descriptor of ``incoming/<id>``, claiming the name on first use.

        The O_EXCL create claims the id among processes sharing the spool; holding
        ``incoming/<id>`` means nobody else can move a file to ``active/<id>``, so an
        id already committed there is refused rather than overwritten.
        """
        if self._fd is None:
            fd = os.open(self._incoming, _CREATE_FLAGS, 0o600)
            if os.path.lexists(self._active):
                os.close(fd)
                os.unlink(self._incoming)
                raise FileExistsError(f"queue id {self.queue_id} is already in use")
            self._fd = fd
            self._owns_incoming = True
        return self._fd

    def _discard(self) -> None:
        self._held = None
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._owns_incoming:
            self._owns_incoming = False
            unlink_quietly(self._incoming)

    def _seal(self) -> int:
        """Write what is held plus the trailer and move into ``active/``.

        Returns the still open descriptor: the caller syncs (or not) and closes it.
        """
        if self._closed:
            raise ValueError(f"message {self.queue_id} is already closed")
        held, self._held = self._held, None
        if held is None:
            parts: list[bytes | bytearray] = []
        else:  # one writev: envelope, text and trailer, no copy of the text
            prefix = self._prefix()
            self._crc = zlib.crc32(held, zlib.crc32(prefix))
            parts = [prefix, held]
        parts.append(b"\nPETREL-END %d %08x\n" % (self.size, self._crc))
        fd = self._file()
        _write_parts(fd, parts)
        self._fd = None
        self._closed = True
        try:
            os.rename(self._incoming, self._active)
        except BaseException:
            os.close(fd)
            raise
        self._owns_incoming = False
        return fd


def _write_parts(fd: int, parts: list[bytes | bytearray]) -> None:
    """writev(2) the parts; a short write (legal, rare) finishes with plain writes."""
    written = os.writev(fd, parts)
    total = sum(len(p) for p in parts)
    if written < total:
        write_all(fd, b"".join(parts)[written:])


class Spool:
    """The queue directory: group-committed writes, recovery, reads and delivery state.

    The file backend of `petrel.queue.store.QueueStore`.

    `use_syncfs` None picks syncfs(2) when the system has it, for batches larger than
    `PER_FILE_SYNC_MAX`; False means one fsync per file plus one of ``active/`` for
    every batch (slower for big batches, but it touches only the spool's own files,
    which may suit a disk shared with busy neighbours).
    """

    def __init__(self, root: Path, *, use_syncfs: bool | None = None) -> None:
        if use_syncfs and not HAVE_SYNCFS:
            raise ValueError("syncfs is not available on this system")
        self.root = root
        self.sync_count = 0  # sync rounds done; a batch of commits costs one
        self.commit_count = 0  # messages made durable
        self._use_syncfs = HAVE_SYNCFS if use_syncfs is None else use_syncfs
        self._incoming = root / "incoming"
        self._active = root / "active"
        self._state = root / "state"
        self._corrupt = root / "corrupt"
        # Per-message paths are built from these strings: pathlib costs several
        # microseconds a join, which the profile showed on the event loop.
        self._incoming_prefix = f"{self._incoming}{os.sep}"
        self._active_prefix = f"{self._active}{os.sep}"
        self._state_prefix = f"{self._state}{os.sep}"
        self._sync_fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._publisher: ThreadPoolExecutor | None = None  # copies' second round
        self.copier: Copier | None = None  # direct delivery's, set by the server's wiring
        self._pending: list[tuple[MessageWriter, Copies | None, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._free = 0
        self._free_checked = float("-inf")

    # -- life cycle ---------------------------------------------------------

    def open(self) -> None:
        """Create the directories (0700) and the commit thread."""
        os.makedirs(self.root.parent, mode=0o700, exist_ok=True)
        dirs = (self.root, self._incoming, self._active, self._state, self._corrupt)
        if [d for d in dirs if ensure_dir(d)]:
            fsync_dir(self.root)
            fsync_dir(self.root.parent)
        # Opened before any write, so syncfs reports every later write-back error.
        self._sync_fd = open_dir(self._active)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="petrel-spool")
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="petrel-publish")

    def close(self) -> None:
        """Wait for the commit thread and release the directory fd."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
            self._publisher = None
        if self._sync_fd is not None:
            os.close(self._sync_fd)
            self._sync_fd = None

    def recover(self) -> list[Envelope]:
        """Start-up: drop ``incoming/``, validate ``active/``, return envelopes by arrival.

        Every file in ``active/`` is read in full and its CRC checked; a bad one
        moves to ``corrupt/`` and is logged. State files are applied; orphans and
        leftover temporary files are removed. Run before any writer starts.
        """
        for name in os.listdir(self._incoming):
            try:
                os.unlink(self._incoming / name)
            except IsADirectoryError:
                os.rename(self._incoming / name, self._free_corrupt_path(name))
        envelopes = []
        for name in sorted(os.listdir(self._active)):
            try:
                envelope = self._validate(name)
            except CorruptMessageError as exc:
                self._quarantine(name, str(exc))
                continue
            self._apply_state(envelope)
            envelopes.append(envelope)
        live = {e.queue_id for e in envelopes}
        for name in os.listdir(self._state):
            if name not in live:
                unlink_quietly(self._state / name)
        envelopes.sort(key=lambda e: (e.received_at, e.queue_id))
        return envelopes

    # -- writing ------------------------------------------------------------

    def has_room(self, size: int = 0) -> bool:
        """Is there room for a message of `size` octets (SIZE=) and `MIN_FREE` besides?

        fstatvfs on the open ``active/`` descriptor does no disk I/O; the reading is
        reused for a second. Space for unprivileged users counts, not root's reserve.
        """
        if self._sync_fd is None:
            raise RuntimeError("Spool.open() was not called")
        now = time.monotonic()
        if now - self._free_checked >= _FREE_SPACE_TTL:
            st = os.fstatvfs(self._sync_fd)
            self._free = st.f_bavail * st.f_frsize
            self._free_checked = now
        return self._free >= size + MIN_FREE

    def begin(self, envelope: Envelope) -> MessageWriter:
        """A writer for ``incoming/<id>``; no system call until the file is needed.

        Even a lookup in ``incoming/`` can wait behind a journal commit, and this runs on
        the event loop. Ids are unique within a process; a clash with another process
        sharing the spool is caught when the file is created (`MessageWriter`).
        """
        queue_id = self._check_id(envelope.queue_id)
        return MessageWriter(
            envelope, self._incoming_prefix + queue_id, self._active_prefix + queue_id
        )

    async def commit(self, writer: QueueWriter, copies: Copies | None = None) -> None:
        """Return once the message is on stable storage (raise if it could not be put there).

        ``copies`` (direct delivery's Maildir copies) are written by `copier` in the same
        batch: they share its sync rounds, and ``failed`` ones join the envelope before
        it is stored. If the caller is cancelled meanwhile, the commit still completes
        and the message will be delivered: a duplicate is better than a loss.
        """
        if copies is not None and self.copier is None:
            raise ValueError("this spool takes no copies: no copier is set")
        if not isinstance(writer, MessageWriter):
            raise TypeError(f"not a writer of this spool: {writer!r}")
        if self._executor is None:
            raise RuntimeError("Spool.open() was not called")
        if writer._handed_over:
            raise ValueError(f"message {writer.queue_id} was already committed")
        writer._handed_over = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((writer, copies, done))
        if self._committer is None:
            self._committer = loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        """The one committer: take everything queued, commit it as a batch, repeat.

        A batch with copies ends on the publishing thread (their renames and the
        second sync round), while the next batch is already being written and synced:
        two batches in flight, whose sync rounds the file system's `syncfs` group shares.
        """
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                metrics.COMMIT_BATCH.observe(len(batch))
                work = [(writer, copies) for writer, copies, _ in batch]
                waiting = [done for _, _, done in batch]
                try:
                    staged = await loop.run_in_executor(self._executor, self._stage, work)
                except asyncio.CancelledError:
                    for done in waiting:
                        done.cancel()
                    raise
                except Exception as exc:
                    _settle(waiting, [exc] * len(batch))
                    continue
                results, copy_round = staged
                if copy_round is None:
                    _settle(waiting, results)
                    continue
                publishing = loop.run_in_executor(
                    self._publisher, self._publish, work, results, copy_round
                )
                publishing.add_done_callback(functools.partial(_settle_from, waiting))
        finally:
            self._committer = None

    def _stage(
        self, work: list[tuple[MessageWriter, Copies | None]]
    ) -> tuple[list[Exception | None], CopyRound | None]:
        """Commit thread: write the copies, seal and rename each spool file into
        ``active/``, then make the batch durable at once.

        A batch of up to `PER_FILE_SYNC_MAX` files fsyncs each of them and ``active/``;
        a larger one pays one syncfs(2) instead. Renaming first lets the file's fsync
        commit its directory entry in the same journal transaction. Copies are written
        first (the recipients of those that fail go into their spool file) and share
        that sync; `_publish` then makes them visible.
        """
        assert self._sync_fd is not None
        batch = [copies for _, copies in work if copies is not None]
        files = len(work) + sum(c.files for c in batch)
        per_file = not self._use_syncfs or files <= PER_FILE_SYNC_MAX
        if not batch:
            return self._seal_and_sync(work, per_file), None
        assert self.copier is not None
        copy_round = self.copier.write(batch, per_file, os.fstat(self._sync_fd).st_dev)
        try:
            results = self._seal_and_sync(work, per_file)
        except BaseException:
            copy_round.close()
            raise
        return results, copy_round

    def _publish(
        self,
        work: list[tuple[MessageWriter, Copies | None]],
        results: list[Exception | None],
        copy_round: CopyRound,
    ) -> list[Exception | None]:
        """Publishing thread: the copies into ``new/`` (round two), unless their
        message failed; a copy not made durable fails its message."""
        try:
            for (_, copies), result in zip(work, results, strict=True):
                if copies is not None and result is not None:
                    copy_round.discard(copies, result)  # not acknowledged: not delivered
            copy_round.publish()
        finally:
            copy_round.close()
        return [
            copies.error if result is None and copies is not None else result
            for (_, copies), result in zip(work, results, strict=True)
        ]

    def _seal_and_sync(
        self, work: list[tuple[MessageWriter, Copies | None]], per_file: bool
    ) -> list[Exception | None]:
        results: list[Exception | None] = []
        sealed: list[tuple[MessageWriter, int]] = []
        for writer, copies in work:
            if copies is not None:
                writer.envelope.recipients.extend(copies.failed)  # the queue tries them
                if not writer.envelope.recipients:  # every copy written: nothing to queue
                    writer._discard()
                    results.append(None)
                    continue
            try:
                fd = writer._seal()
            except Exception as exc:
                writer._discard()
                results.append(exc)
                continue
            sealed.append((writer, fd))
            results.append(None)
        self.commit_count += len(sealed)
        try:
            if not per_file:
                assert self._sync_fd is not None
                syncfs(self._sync_fd)
                self.sync_count += 1
            elif sealed:
                for _, fd in sealed:
                    os.fsync(fd)
                fsync_dir(self._active)
                self.sync_count += 1
        except OSError as exc:
            for writer, _ in sealed:
                unlink_quietly(writer._active)
            return [exc] * len(work)
        finally:
            for _, fd in sealed:
                os.close(fd)
        return results

    # -- reading ------------------------------------------------------------

    def list_ids(self) -> list[str]:
        """Ids of the committed messages, oldest first (ids sort by time)."""
        return sorted(name for name in os.listdir(self._active) if is_valid_queue_id(name))

    def load(self, queue_id: str) -> Envelope:
        """The envelope of a committed message with its delivery state applied."""
        fd, size = _open_regular(self._active_prefix + self._check_id(queue_id))
        try:
            envelope = self._parse_envelope(queue_id, _read_layout(fd, size))
        finally:
            os.close(fd)
        self._apply_state(envelope)
        return envelope

    def iter_body(
        self, queue_id: str, chunk_size: int = _READ_CHUNK
    ) -> Generator[bytes, None, None]:
        """Stream the message bytes; CorruptMessageError at the end if the CRC fails.

        A consumer that writes elsewhere should publish its copy only after the
        iterator is exhausted, so a damaged file is never delivered.
        """
        fd, size = _open_regular(self._active_prefix + self._check_id(queue_id))
        try:
            yield from _iter_body(fd, _read_layout(fd, size), chunk_size)
        finally:
            os.close(fd)

    def read_header(self, queue_id: str) -> bytes:
        """The header section with its blank line (at most `HEADER_SCAN` octets).

        Stops reading early, so the CRC is not checked: for display and notices only.
        """
        head = b""
        with contextlib.closing(self.iter_body(queue_id, chunk_size=65536)) as chunks:
            for chunk in chunks:
                head += chunk
                if b"\r\n\r\n" in head or len(head) >= HEADER_SCAN:
                    break
        end = head.find(b"\r\n\r\n")
        return head[: end + 4] if end >= 0 else head[:HEADER_SCAN]

    def read_body(self, queue_id: str) -> bytes:
        """The whole message in memory: for small messages only."""
        return b"".join(self.iter_body(queue_id))

    def body_size(self, queue_id: str) -> int:
        """Length of the message bytes, e.g. for SIZE= when relaying."""
        fd, size = _open_regular(self._active_prefix + self._check_id(queue_id))
        try:
            return _read_layout(fd, size).body_length
        finally:
            os.close(fd)

    # -- delivery state -----------------------------------------------------

    def save_state(self, envelope: Envelope) -> None:
        """Record recipient states and hold atomically (temporary file + rename).

        No fsync: after a crash the previous state may come back, so a delivery
        attempt may be repeated, but none is ever lost.
        """
        queue_id = self._check_id(envelope.queue_id)
        data = json.dumps(
            {"hold": envelope.hold, "recipients": [r.to_dict() for r in envelope.recipients]},
            separators=(",", ":"),
            sort_keys=True,
        ).encode("ascii")
        tmp = self._state / f".tmp-{queue_id}-{os.getpid()}-{next(_tmp_counter)}"
        fd = os.open(tmp, _CREATE_FLAGS, 0o600)
        try:
            write_all(fd, data)
        except BaseException:
            os.close(fd)
            unlink_quietly(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self._state / queue_id)

    def finish(self, queue_id: str) -> None:
        """Remove a message whose recipients are all final (or that an operator deletes).

        The message file goes first: a crash in between leaves an orphan state
        file, which recovery removes, never a message without its state.
        """
        self._check_id(queue_id)
        unlink_quietly(self._active_prefix + queue_id)
        unlink_quietly(self._state_prefix + queue_id)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _check_id(queue_id: str) -> str:
        """Refuse anything that is not a queue id before it becomes part of a path."""
        if not is_valid_queue_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return queue_id

    @staticmethod
    def _parse_envelope(queue_id: str, layout: _Layout) -> Envelope:
        try:
            envelope = Envelope.from_json(layout.envelope_json)
        except ValueError as exc:
            raise CorruptMessageError(f"bad envelope: {exc}") from None
        if envelope.queue_id != queue_id:
            raise CorruptMessageError(f"envelope names another queue id {envelope.queue_id!r}")
        return envelope

    def _validate(self, name: str) -> Envelope:
        """Read a file of ``active/`` in full; its envelope if everything checks out."""
        if not is_valid_queue_id(name):
            raise CorruptMessageError("not a queue id")
        try:
            fd, size = _open_regular(self._active / name)
        except OSError as exc:  # ELOOP for a symlink
            raise CorruptMessageError(f"cannot open: {exc.strerror}") from None
        try:
            layout = _read_layout(fd, size)
            envelope = self._parse_envelope(name, layout)
            for _ in _iter_body(fd, layout, _READ_CHUNK):
                pass
        finally:
            os.close(fd)
        return envelope

    def _apply_state(self, envelope: Envelope) -> None:
        """Overlay ``state/<id>``; a missing or unusable one means "as first queued"."""
        try:
            data = (self._state / envelope.queue_id).read_bytes()
        except FileNotFoundError:
            return
        try:
            state = json.loads(data)
            hold = state["hold"]
            recipients = [Recipient.from_dict(r) for r in state["recipients"]]
            if not isinstance(hold, bool):
                raise ValueError("hold is not a boolean")
            if [r.address for r in recipients] != [r.address for r in envelope.recipients]:
                raise ValueError("recipients do not match the message")
        except (ValueError, KeyError, TypeError) as exc:
            log_event(
                logger,
                "spool.state_ignored",
                logging.WARNING,
                queue_id=envelope.queue_id,
                reason=str(exc),
            )
            return
        envelope.hold = hold
        envelope.recipients = recipients

    def _quarantine(self, name: str, reason: str) -> None:
        """Move a bad file (and its state) to ``corrupt/`` for the operator; never deliver it."""
        destination = self._free_corrupt_path(name)
        os.rename(self._active / name, destination)
        if is_valid_queue_id(name):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self._state / name, destination.with_name(destination.name + ".state"))
        log_event(
            logger,
            "spool.corrupt",
            logging.ERROR,
            queue_id=name,
            reason=reason,
            moved_to=str(destination),
        )

    def _free_corrupt_path(self, name: str) -> Path:
        candidate = self._corrupt / name
        n = 0
        while os.path.lexists(candidate):
            n += 1
            candidate = self._corrupt / f"{name}.{n}"
        return candidate


if TYPE_CHECKING:  # Spool is a QueueStore; mypy checks it here
    _store: QueueStore = Spool(Path())


def _settle(waiting: list[asyncio.Future[None]], results: list[Exception | None]) -> None:
    for done, result in zip(waiting, results, strict=True):
        if done.done():
            continue
        if result is None:
            done.set_result(None)
        else:
            done.set_exception(result)


def _settle_from(
    waiting: list[asyncio.Future[None]], publishing: asyncio.Future[list[Exception | None]]
) -> None:
    if publishing.cancelled():
        for done in waiting:
            done.cancel()
        return
    error = publishing.exception()
    if error is not None:
        fail = error if isinstance(error, Exception) else RuntimeError(str(error))
        _settle(waiting, [fail] * len(waiting))
    else:
        _settle(waiting, publishing.result())
