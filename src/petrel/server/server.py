"""Listeners, connection limits, idle timeouts and graceful shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter
from typing import TYPE_CHECKING

from petrel import smtp
from petrel.config import Config, Listener
from petrel.log import log_event
from petrel.policy import Policy
from petrel.queue.spool import Spool

from .rdns import ReverseDns
from .session import SmtpSession

if TYPE_CHECKING:
    from petrel.delivery.manager import QueueManager

__all__ = ["Listener", "Server"]

log = logging.getLogger("petrel.server")

# Modes whose machinery (TLS, AUTH) is not in this build yet: their listeners are
# skipped with a warning rather than served as something they are not.
SERVED_MODES = frozenset({"smtp", "lmtp"})
_SWEEP_SECONDS = 1.0


class Server:
    """Owns the listening sockets and the set of live sessions."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        manager: QueueManager,
        policy: Policy,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.spool = spool
        self.manager = manager
        self.policy = policy
        self.loop = loop
        self.hostname = config.server.hostname
        self.extensions = smtp.Extensions(size=config.limits.message_size)
        self.rdns = ReverseDns(loop, enabled=config.server.reverse_dns)
        self.sessions: set[SmtpSession] = set()
        self._per_ip: Counter[str] = Counter()
        self._servers: list[asyncio.Server] = []
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}"
        self._sweeper: asyncio.Task[None] | None = None

    def new_session_id(self) -> str:
        return f"{self._id_prefix}.{next(self._ids):x}"

    async def start(self) -> list[tuple[str, int, str]]:
        """Bind every listener; returns (host, port, mode) as actually bound."""
        bound: list[tuple[str, int, str]] = []
        for listener in self.config.listeners:
            if listener.mode not in SERVED_MODES:
                log_event(
                    log,
                    "listener-skipped",
                    level=logging.WARNING,
                    address=f"{listener.host}:{listener.port}",
                    mode=listener.mode,
                    reason="mode not available in this build yet",
                )
                continue
            server = await self.loop.create_server(
                lambda listener=listener: SmtpSession(self, listener),
                listener.host,
                listener.port,
                reuse_address=True,
                backlog=4096,
            )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound.append((host, port, listener.mode))
                log_event(log, "listening", address=_join(host, port), mode=listener.mode)
        self._sweeper = self.loop.create_task(self._sweep())
        return bound

    # -- connection accounting ---------------------------------------------------------

    def admit(self, session: SmtpSession) -> str | None:
        """None to accept the session, else the reason to refuse it with 421."""
        limits = self.config.limits
        if len(self.sessions) >= limits.connections:
            return "Too many connections, try again later"
        if self._per_ip[session.peer_ip] >= limits.connections_per_ip:
            return "Too many connections from your address, try again later"
        self.sessions.add(session)
        self._per_ip[session.peer_ip] += 1
        return None

    def release(self, session: SmtpSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self._per_ip[session.peer_ip] -= 1
            if self._per_ip[session.peer_ip] <= 0:
                del self._per_ip[session.peer_ip]

    async def _sweep(self) -> None:
        """Close sessions idle past their timeout with 421 4.4.2 (RFC 5321 §4.5.3.2)."""
        timeout = smtp.reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded")
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = self.loop.time()
            for session in list(self.sessions):
                if not session.busy and now - session.last_active > session.idle_limit:
                    log_event(log, "timeout", session=session.id, client=session.peer_ip)
                    session.close_with(timeout)

    # -- shutdown ------------------------------------------------------------------------

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting; let messages in flight finish, then 421 everyone else."""
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        going_down = smtp.reply(421, "4.3.2", f"{self.hostname} Service shutting down")
        deadline = self.loop.time() + grace
        while self.sessions and self.loop.time() < deadline:
            for session in list(self.sessions):
                if not session.busy and not session.in_message:
                    session.close_with(going_down)
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.close_with(going_down)
        for server in self._servers:
            await asyncio.wait_for(server.wait_closed(), grace)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
