"""Composition: build the spool, policy, queue manager and listeners, and run them.

``petrel serve`` is this module: it owns start-up order (recover the spool before
accepting anything), signal handling and the orderly shutdown of DESIGN.md.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Coroutine
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


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads TLS); returns the process exit status."""
    fd_limit = _raise_fd_limit()
    loop = asyncio.get_running_loop()
    data_dir = config.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_dir(data_dir)
    control = ControlServer(control_path(data_dir))
    control.bind()
    spool = Spool(data_dir / "queue")
    spool.open()
    recovered = spool.recover()
    policy = Policy(config, Aliases.load(config.aliases.file))
    manager = QueueManager(config, spool, policy)
    manager.start(recovered)
    await control.start(manager)  # before the listeners: "listening" means it answers
    pickup = PickupWatcher(spool, manager)  # mail from `petrel sendmail`
    pickup.start()
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
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    await stop.wait()
    log_event(log, "stopping")
    await control.close()
    await server.shutdown()
    await pickup.stop()
    await manager.stop()
    spool.close()
    remove_pid_file(data_dir)
    log_event(log, "stopped", messages=spool.commit_count, syncs=sync_rounds())
    return 0


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed, else on the stock event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
