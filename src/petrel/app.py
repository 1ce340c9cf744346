"""Composition: build the spool, policy, queue manager and listeners, and run them.

``petrel serve`` is this module: it owns start-up order (recover the spool before
accepting anything), signal handling and the orderly shutdown of DESIGN.md.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from petrel.config import Config
from petrel.delivery.manager import QueueManager
from petrel.fsutil import ensure_dir
from petrel.log import log_event
from petrel.policy import Policy
from petrel.policy.aliases import Aliases
from petrel.queue.spool import Spool
from petrel.server import Server
from petrel.server.control import ControlServer, control_path

log = logging.getLogger("petrel")


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
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
    server = Server(config, spool, manager, policy, loop)
    await server.start()
    log_event(
        log,
        "ready",
        hostname=config.server.hostname,
        data_dir=str(data_dir),
        recovered=len(recovered),
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log_event(log, "stopping")
    await control.close()
    await server.shutdown()
    await manager.stop()
    spool.close()
    log_event(log, "stopped", messages=spool.commit_count, syncs=spool.sync_count)
    return 0


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed, else on the stock event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
