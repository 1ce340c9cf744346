"""Pickup of locally submitted mail (``petrel sendmail``) by a running server.

``petrel sendmail`` commits straight into the spool, then pokes the named pipe
``<data_dir>/queue/pickup`` with the queue id, as Postfix's postdrop pokes pickup.
The server reads the pipe and hands the message to the queue manager at once. In
case a poke is lost (the server was starting, the pipe was full), the watcher also
rescans ``active/`` every few seconds, when the directory changed, for committed
local messages the manager does not know yet. Messages received over SMTP are
never picked up here: their session submits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

from petrel.delivery.manager import QueueManager
from petrel.log import log_event
from petrel.queue.spool import Spool

__all__ = ["LOCAL_PROTOCOL", "PICKUP_PIPE", "PickupWatcher", "notify_pickup"]

log = logging.getLogger("petrel.pickup")

PICKUP_PIPE = "pickup"  # in <data_dir>/queue/
LOCAL_PROTOCOL = "local"  # Envelope.protocol of locally submitted mail
SCAN_INTERVAL = 2.0


def notify_pickup(queue_root: Path, queue_id: str) -> bool:
    """Wake a running server for ``queue_id``; False when none is listening (that is fine)."""
    try:
        fd = os.open(queue_root / PICKUP_PIPE, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # no reader, or never started
            return False
        raise
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.write(fd, queue_id.encode("ascii") + b"\n")
    except BlockingIOError:
        return False  # pipe full: the periodic scan will find it
    finally:
        os.close(fd)
    return True


class PickupWatcher:
    """Feeds locally submitted messages to the ``QueueManager`` of a running server."""

    def __init__(self, spool: Spool, manager: QueueManager, interval: float = SCAN_INTERVAL):
        self.spool = spool
        self.manager = manager
        self.interval = interval
        self._pipe = spool.root / PICKUP_PIPE
        self._fd: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_mtime = 0

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
            while os.read(self._fd, 65536):
                pass
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                self.scan(force=woken)
            except OSError as exc:
                log_event(log, "pickup-scan-failed", level=logging.WARNING, error=str(exc))

    def scan(self, *, force: bool = False) -> int:
        """Submit committed local messages the manager does not track; returns how many."""
        mtime = os.stat(self.spool.root / "active").st_mtime_ns
        if mtime == self._last_mtime and not force:
            return 0
        self._last_mtime = mtime
        found = 0
        for queue_id in self.spool.list_ids():
            if self.manager.knows(queue_id):
                continue
            try:
                envelope = self.spool.load(queue_id)
            except (OSError, ValueError):
                continue  # finished meanwhile, or damaged: recovery deals with that at start
            if envelope.protocol != LOCAL_PROTOCOL:
                continue  # SMTP mail: its session submits it after the commit
            log_event(log, "pickup", queue_id=queue_id, sender=envelope.sender or "<>")
            self.manager.submit(envelope)
            found += 1
        return found
