"""Pickup: locally submitted mail (``petrel sendmail``, worker sessions) reaches the server.

``petrel sendmail`` commits straight into the spool, then pokes the named pipe
``<data_dir>/queue/pickup`` with the queue id, as Postfix's postdrop pokes pickup.
The server reads the pipe and hands the message to the queue manager at once. In
case a poke is lost (the server was starting, the pipe was full), the watcher also
rescans ``active/`` every few seconds, when the directory changed, for committed
local messages the manager does not know yet. Messages received over SMTP are
never picked up by that scan in a single-process server: their session submits them.

With ``server.workers`` > 1 the SMTP sessions run in worker processes (see
``petrel.server.workers``): a worker commits a message to the spool and then writes
its queue id to the same pipe (a client's ETRN is asked of the parent's queue manager
over the control socket instead, so it gets the manager's own 250 or 251). The
parent runs no sessions then, so its scan takes any committed message it does not
know (``accept_any``): a poke lost to a full pipe costs a delay, never the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from petrel import smtp
from petrel.log import log_event
from petrel.queue import Envelope, Recipient, Spool, is_valid_queue_id

from .trace import LOCAL_PROTOCOL

if TYPE_CHECKING:
    from petrel.delivery.manager import QueueManager

__all__ = ["PICKUP_PIPE", "Notified", "PickupPoke", "PickupWatcher", "write_pickup"]

log = logging.getLogger("petrel.pickup")

PICKUP_PIPE = "pickup"  # in <data_dir>/queue/
SCAN_INTERVAL = 2.0
SETTLE_SECONDS = 1.0  # a worker's message found by the scan alone must be this old


class Notified:
    """The `Submitter` of a process without the queue manager on a shared queue
    ([queue] backend = "postgresql"): the commit itself NOTIFYs every node, so there is
    nothing to poke. ``etrn`` asks the queue manager for a client's ETRN (RFC 1985);
    without it, ETRN is refused with 458 rather than answered with a guess."""

    def __init__(self, etrn: Callable[[str], smtp.Reply] | None = None) -> None:
        self._etrn = etrn

    def submit(self, envelope: Envelope) -> None:
        pass

    def delivered(self, envelope: Envelope, recipients: Sequence[Recipient]) -> None:
        """Counted in this process's metrics, which a worker shares with the parent's
        /metrics (petrel.metrics); `petrel status` covers the parent's own process."""
        from petrel import metrics  # here: `petrel sendmail` needs no prometheus-client

        age = max(0.0, time.time() - envelope.received_at)
        source = metrics.message_source(envelope.protocol, envelope.notice)
        metrics.delivered_at_intake(source, len(recipients), age, bool(envelope.recipients))

    def etrn(self, node: str) -> smtp.Reply:
        """Answered by the queue manager: 250 started, or 251 none waiting."""
        if self._etrn is None or node.startswith("#"):
            return smtp.reply(458, "4.0.0", f"Unable to queue messages for node {node}")
        return self._etrn(node)


class PickupPoke(Notified):
    """The `Submitter` of a process without the queue manager (a worker, ``petrel
    sendmail``): it names committed mail to the server through the pickup pipe.

    ``etrn`` asks the queue manager for a client's ETRN (a worker's is
    ``server.control.ask_etrn``, a request over the control socket); without it, ETRN
    is refused with 458 rather than answered with a guess.
    """

    def __init__(self, queue_root: Path, etrn: Callable[[str], smtp.Reply] | None = None) -> None:
        super().__init__(etrn)
        self.root = queue_root

    def submit(self, envelope: Envelope) -> None:
        # No reader (server down) or a full pipe: the server's scan or its next start
        # finds the message; it is durable already.
        try:
            poked = write_pickup(self.root, envelope.queue_id)
        except OSError:
            poked = False
        if not poked:
            log_event(log, "pickup-poke-lost", level=logging.DEBUG, queue_id=envelope.queue_id)


def write_pickup(queue_root: Path, line: str) -> bool:
    """Write one line (a queue id) to the pickup pipe, if anyone reads it.

    A line is far shorter than PIPE_BUF, so concurrent writers never interleave.
    """
    try:
        fd = os.open(queue_root / PICKUP_PIPE, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # no reader, or never started
            return False
        raise
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.write(fd, line.encode("ascii") + b"\n")
    except BlockingIOError:
        return False  # pipe full: the periodic scan will find it
    finally:
        os.close(fd)
    return True


class PickupWatcher:
    """Feeds locally submitted messages to the ``QueueManager`` of a running server."""

    def __init__(
        self,
        spool: Spool,
        manager: QueueManager,
        interval: float = SCAN_INTERVAL,
        *,
        accept_any: bool = False,
    ):
        self.spool = spool
        self.manager = manager
        self.interval = interval
        self.accept_any = accept_any  # workers > 1: no session of ours submits anything
        self._buffer = b""
        self._lines: list[bytes] = []
        self._pipe = spool.root / PICKUP_PIPE
        self._fd: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_mtime = 0
        self._unreadable: set[str] = set()  # queue ids already logged as unreadable

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if not self._pipe.exists():
                os.mkfifo(self._pipe, 0o600)
            # O_RDWR: the pipe never reports EOF when the last writer goes away.
            fd = os.open(self._pipe, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(f"{self._pipe} is not a named pipe")
        except OSError as exc:
            log_event(log, "pickup-pipe-unusable", level=logging.WARNING, error=str(exc))
        else:
            self._fd = fd
            loop.add_reader(fd, self._readable)
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _readable(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._fd, 65536):
                self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self._lines.extend(lines)
        if len(self._buffer) > 4096:  # not ours: drop it, the scan still finds the mail
            self._buffer = b""
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_scan = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            lines, self._lines = self._lines, []
            try:
                if lines:
                    self._take(lines)
                if loop.time() >= next_scan:  # also under a steady stream of pokes
                    next_scan = loop.time() + self.interval
                    self.scan()
            except OSError as exc:
                log_event(log, "pickup-scan-failed", level=logging.WARNING, error=str(exc))

    def _take(self, lines: list[bytes]) -> None:
        """Submit the messages named in the pipe."""
        for raw in dict.fromkeys(lines):
            line = raw.decode("ascii", "replace").strip()
            if not is_valid_queue_id(line) or self.manager.knows(line):
                continue
            self._submit(line)

    def _submit(self, queue_id: str, *, scanned: bool = False) -> bool:
        try:
            envelope = self.spool.load(queue_id)
            if scanned and envelope.protocol != LOCAL_PROTOCOL:
                # A worker renames into active/ before its sync: a file seen by the
                # scan alone may not be acknowledged yet. Its poke, or a later scan, will do.
                age = time.time() - os.stat(self.spool.root / "active" / queue_id).st_ctime
                if age < SETTLE_SECONDS:
                    return False
        except PermissionError as exc:
            # Not ours to read (a `petrel sendmail` run as root before `[server] user`
            # was honoured): never delivered until its owner is fixed, so say so, once.
            if queue_id not in self._unreadable:
                self._unreadable.add(queue_id)
                log_event(
                    log,
                    "pickup-unreadable",
                    level=logging.ERROR,
                    queue_id=queue_id,
                    error=str(exc),
                    effect="not delivered until the file belongs to the server's user",
                )
            return False
        except (OSError, ValueError):
            return False  # finished meanwhile, or damaged: recovery deals with that at start
        local = envelope.protocol == LOCAL_PROTOCOL
        if not local and not self.accept_any:
            return False  # SMTP mail: its session submits it after the commit
        log_event(
            log,
            "pickup",
            level=logging.INFO if local else logging.DEBUG,
            queue_id=queue_id,
            sender=envelope.sender or "<>",
        )
        self.manager.submit(envelope)
        return True

    def scan(self, *, force: bool = False) -> int:
        """Submit committed local messages the manager does not track; returns how many."""
        mtime = os.stat(self.spool.root / "active").st_mtime_ns
        if mtime == self._last_mtime and not force and not self.accept_any:
            return 0
        self._last_mtime = mtime
        found = 0
        for queue_id in self.spool.list_ids():
            if not self.manager.knows(queue_id) and self._submit(queue_id, scanned=True):
                found += 1
        return found
