"""``server.workers`` > 1: several accepting processes, one queue manager.

Python runs one core per process, so with ``workers = N`` (N > 1) ``petrel serve``
becomes a parent and N workers:

* The parent does everything a single process does except SMTP sessions: it
  recovers the spool, binds the listening sockets, runs the control socket, the
  pickup watcher and the one queue manager, writes the pid file and handles signals.
  It accepts no connections itself.
* Each worker is ``petrel serve --worker I`` started with the parent's listening
  sockets (inherited file descriptors, named in ``PETREL_WORKER_FDS``); the kernel
  hands each new connection to one of the workers blocked in accept. A worker runs
  sessions only: it commits to the shared spool (group commit and syncfs coalescing
  are per process) and then writes the queue id to the pickup pipe, where the
  parent's ``PickupWatcher`` submits it to the queue manager. A client's ETRN is
  asked of that manager over the control socket (``control.ask_etrn``).

Connection limits (``limits.connections``, ``connections_per_ip``) are counted per
worker; the AUTH failure throttle is shared through its table in data_dir. SIGHUP is
forwarded to the workers (each re-reads the configuration file and the TLS pair itself,
petrel.reload), and so is SIGUSR1 (reopen the log file); SIGTERM
stops them (SIGTERM, then SIGKILL after a grace period); a worker that dies is logged and
started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from petrel.config import Config
from petrel.log import log_event, request_reopen

from .tls import TLS_FDS_ENV

__all__ = ["PARENT_PID_ENV", "WORKER_FDS_ENV", "WorkerPool", "decode_fds", "encode_fds"]

log = logging.getLogger("petrel.workers")

WORKER_FDS_ENV = "PETREL_WORKER_FDS"
PARENT_PID_ENV = "PETREL_PARENT_PID"  # a worker whose parent is not this pid stops at once
_POLL_SECONDS = 0.2
_RESTART_DELAY = 1.0  # a worker that dies young waits this long before its restart
_STOP_GRACE = 15.0  # a worker's own shutdown lets messages in flight finish for 10 s


def encode_fds(sockets: dict[int, list[socket.socket]]) -> str:
    """``listener-index:fd`` pairs, comma separated."""
    return ",".join(
        f"{index}:{sock.fileno()}" for index, socks in sockets.items() for sock in socks
    )


def decode_fds(text: str) -> dict[int, list[socket.socket]]:
    sockets: dict[int, list[socket.socket]] = {}
    for item in filter(None, text.split(",")):
        index, _, fd = item.partition(":")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        sockets.setdefault(int(index), []).append(sock)
    return sockets


class _Worker:
    def __init__(self, number: int) -> None:
        self.number = number
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restart_at: float | None = None


class WorkerPool:
    """The parent's side: start, watch, restart, signal and stop the workers."""

    def __init__(
        self,
        config: Config,
        count: int,
        sockets: dict[int, list[socket.socket]],
        log_args: list[str],
        tls_fds: tuple[int, int] | None = None,
    ) -> None:
        self.config = config
        self.tls_fds = tls_fds  # tls.copy_material's copies, passed on to every worker
        self.sockets = sockets
        self.log_args = log_args
        self.workers = [_Worker(number) for number in range(1, count + 1)]
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _spawn(self, worker: _Worker) -> None:
        argv = [sys.executable, "-m", "petrel", "serve", *self.log_args]
        if self.config.source is not None:
            argv += ["--config", str(self.config.source)]
        argv += ["--worker", str(worker.number)]
        fds = [sock.fileno() for socks in self.sockets.values() for sock in socks]
        env = {
            **os.environ,
            WORKER_FDS_ENV: encode_fds(self.sockets),
            PARENT_PID_ENV: str(os.getpid()),
        }
        env.pop("NOTIFY_SOCKET", None)  # only the parent talks to systemd (server/notify.py)
        if self.tls_fds is not None:
            fds += self.tls_fds
            env[TLS_FDS_ENV] = ",".join(map(str, self.tls_fds))
        worker.process = subprocess.Popen(argv, env=env, pass_fds=fds, stdin=subprocess.DEVNULL)
        worker.started = time.monotonic()
        worker.restart_at = None
        log_event(log, "worker-started", worker=worker.number, pid=worker.process.pid)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is not None:
                    code = worker.process.poll()
                    if code is None:
                        continue
                    log_event(
                        log,
                        "worker-exited",
                        level=logging.ERROR,
                        worker=worker.number,
                        pid=worker.process.pid,
                        status=code,
                    )
                    young = now - worker.started < _RESTART_DELAY
                    worker.process = None
                    worker.restart_at = now + (_RESTART_DELAY if young else 0.0)
                if worker.restart_at is not None and now >= worker.restart_at:
                    try:
                        self._spawn(worker)
                    except OSError as exc:
                        log_event(log, "worker-spawn-failed", level=logging.ERROR, error=str(exc))
                        worker.restart_at = now + _RESTART_DELAY

    def describe(self) -> list[dict[str, int | None]]:
        """Each worker's number and pid (None: exited, waiting for its restart)."""
        return [
            {
                "worker": w.number,
                "pid": w.process.pid
                if w.process is not None and w.process.poll() is None
                else None,
            }
            for w in self.workers
        ]

    def signal(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signum)

    def reload(self) -> None:
        """SIGHUP: each worker re-reads the configuration file and its certificate."""
        self.signal(signal.SIGHUP)

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): this process and each worker reopen the log file."""
        request_reopen()
        self.signal(signal.SIGUSR1)

    async def stop(self, grace: float = _STOP_GRACE) -> None:
        """SIGTERM every worker, wait for them, SIGKILL what is left after ``grace``."""
        if self._watcher is not None:
            self._watcher.cancel()
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        live = [w.process for w in self.workers if w.process is not None]
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in live:
            if process.poll() is None:
                log_event(log, "worker-killed", level=logging.WARNING, pid=process.pid)
                process.kill()
                process.wait()
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
