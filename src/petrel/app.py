"""Composition: build the spool, policy, queue manager and listeners, and run them.

``petrel serve`` is this module: it owns start-up order (recover the spool before
accepting anything), signal handling and the orderly shutdown of DESIGN.md.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import resource
import signal
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from petrel.config import Config
from petrel.delivery.manager import QueueManager
from petrel.delivery.pickup import PickupWatcher
from petrel.fsutil import ensure_dir, sync_rounds
from petrel.log import log_event
from petrel.pidfile import remove_pid_file, write_pid_file
from petrel.policy import Policy
from petrel.policy.aliases import Aliases
from petrel.queue.spool import Spool
from petrel.server import Server
from petrel.server.control import ControlServer, control_path
from petrel.server.server import bind_sockets, join_address, open_auth_state
from petrel.server.tls import TlsManager
from petrel.server.workers import WORKER_FDS_ENV, WorkerPool, WorkerQueue, decode_fds

log = logging.getLogger("petrel")


def _raise_fd_limit() -> int:
    """Every session is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _lock_data_dir(data_dir: Path) -> int | None:
    """Hold ``<data_dir>/petrel.lock`` for the life of the process, or None if taken.

    Two servers on one spool would each recover it and delete the other's messages in
    flight. The kernel drops the lock when the process ends, even by kill -9.
    """
    fd = os.open(data_dir / "petrel.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd  # kept open on purpose: closing it would release the lock


async def serve(config: Config, log_args: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads TLS); returns the process exit status.

    With ``server.workers`` > 1 this process binds the listeners but runs no sessions:
    worker processes (``serve_worker``) accept on its sockets (petrel.server.workers).
    """
    fd_limit = _raise_fd_limit()
    loop = asyncio.get_running_loop()
    data_dir = config.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_dir(data_dir)
    lock = _lock_data_dir(data_dir)
    if lock is None:
        log_event(
            log,
            "already-running",
            level=logging.ERROR,
            data_dir=str(data_dir),
            reason="another petrel serve holds this data_dir; stop it first",
        )
        return 1
    control = ControlServer(control_path(data_dir))
    control.bind()
    spool = Spool(data_dir / "queue")
    spool.open()
    recovered = spool.recover()
    policy = Policy(config, Aliases.load(config.aliases.file))
    manager = QueueManager(config, spool, policy)
    manager.start(recovered)
    await control.start(manager)  # before the listeners: "listening" means it answers
    workers = config.server.workers
    # mail from `petrel sendmail`, and from the workers' sessions when there are workers
    pickup = PickupWatcher(spool, manager, accept_any=workers > 1)
    pickup.start()
    server: Server | None = None
    pool: WorkerPool | None = None
    if workers > 1:
        TlsManager(config)  # generate a self-signed pair once, before the workers race to
        open_auth_state(config)[0].table.close()  # the same for the AUTH files
        pool = WorkerPool(config, workers, _bind_listeners(config), log_args or [])
        pool.start()
    else:
        server = Server(config, spool, manager, policy, loop)
        await server.start()
    pid_file = write_pid_file(data_dir)  # for `petrel reload`
    log_event(
        log,
        "ready",
        hostname=config.server.hostname,
        data_dir=str(data_dir),
        recovered=len(recovered),
        fd_limit=fd_limit,
        pid_file=str(pid_file),
        workers=workers,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, (pool or server).reload_tls)  # type: ignore[union-attr]
    await stop.wait()
    log_event(log, "stopping")
    await control.close()
    if pool is not None:
        await pool.stop()
        pickup.scan(force=True)  # the last pokes of the workers: deliver them now or at start
    if server is not None:
        await server.shutdown()
    await pickup.stop()
    await manager.stop()
    spool.close()
    remove_pid_file(data_dir)
    log_event(log, "stopped", messages=spool.commit_count, syncs=sync_rounds())
    return 0


def _bind_listeners(config: Config) -> dict[int, list[socket.socket]]:
    """The parent binds every served listener; its workers accept on these sockets."""
    bound: dict[int, list[socket.socket]] = {}
    try:
        for index, listener in enumerate(config.listeners):
            bound[index] = bind_sockets(listener)
            for sock in bound[index]:
                host, port = sock.getsockname()[:2]
                log_event(log, "listening", address=join_address(host, port), mode=listener.mode)
    except OSError:
        for socks in bound.values():
            for sock in socks:
                sock.close()
        raise
    return bound


async def serve_worker(config: Config, number: int) -> int:
    """One of ``server.workers``: SMTP sessions on the parent's sockets, nothing else."""
    _raise_fd_limit()
    loop = asyncio.get_running_loop()
    inherited = decode_fds(os.environ.pop(WORKER_FDS_ENV, ""))
    parent = os.getppid()
    spool = Spool(config.server.data_dir / "queue")
    spool.open()  # no recovery: the parent did that before any worker started
    policy = Policy(config, Aliases.load(config.aliases.file))
    server = Server(config, spool, WorkerQueue(spool.root), policy, loop)  # type: ignore[arg-type]
    await server.start(inherited)
    log_event(log, "worker-ready", pid=os.getpid())
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)

    async def orphaned() -> None:  # the parent was killed: do not serve on alone
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log_event(log, "parent-gone", level=logging.WARNING)
        stop.set()

    watchdog = loop.create_task(orphaned())
    await stop.wait()
    watchdog.cancel()
    log_event(log, "worker-stopping")
    await server.shutdown()
    spool.close()
    log_event(log, "worker-stopped", messages=spool.commit_count, syncs=sync_rounds())
    return 0


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed, else on the stock event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
