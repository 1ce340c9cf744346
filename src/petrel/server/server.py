"""Listeners, connection limits, idle timeouts and graceful shutdown.

`Server` accepts connections and accounts for them; what its sessions use (policy,
intake, the AUTH checks, TLS, rDNS) it hands them in one `SessionContext`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import itertools
import logging
import os
import secrets
import socket
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from petrel import metrics, proxyproto, smtp
from petrel.config import SMTP_MODES, Config, Listener
from petrel.dns import Resolver
from petrel.intake import Intake
from petrel.log import log_event
from petrel.mailauth.checks import Checker
from petrel.mailauth.resolver import ResolverLookups
from petrel.policy import Policy
from petrel.policy.antispam import Antispam
from petrel.policy.auth import Authenticator
from petrel.policy.decoy import SECRET_FILE, ScramDecoys, load_secret
from petrel.policy.greylist import GREYLIST_SLOTS, Greylist
from petrel.policy.rates import RATES_SLOTS, Rates
from petrel.policy.refusals import Reason, Refusals
from petrel.policy.throttle import AuthThrottle, ThrottleTable

from .modes import IMPLICIT_TLS_MODES, STARTTLS_MODES
from .rdns import ReverseDns
from .session import PROXY_TIMEOUT, SessionContext, SmtpSession, unmapped
from .tls import TlsManager

__all__ = [
    "ListenError",
    "Listener",
    "Server",
    "bind_sockets",
    "join_address",
    "open_auth_state",
    "open_greylist",
    "open_rates",
    "open_refusals",
]

log = logging.getLogger("petrel.server")

_SWEEP_SECONDS = 1.0
THROTTLE_FILE = "auth-throttle"
RATES_FILE = "rates"
REFUSALS_FILE = "refusals"
GREYLIST_FILE = "greylist"
_BACKLOG = 4096


class _Listening(Protocol):
    """What shutdown needs of a listener: ``asyncio.Server`` or ``ImplicitTlsListener``."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class ListenError(OSError):
    """A listener could not be bound; the text names its address and mode."""

    @classmethod
    def of(cls, listener: Listener, exc: OSError) -> ListenError:
        address = join_address(listener.host or "*", listener.port)
        # asyncio's own text repeats the address as a tuple: the errno says it plainly
        errno = exc.errno or 0
        problem = os.strerror(errno).lower() if errno > 0 else str(exc)
        return cls(exc.errno, f"cannot listen on {address} ({listener.mode}): {problem}")

    def __str__(self) -> str:
        return str(self.strerror)


def bind_sockets(listener: Listener) -> list[socket.socket]:
    """Listening, non-blocking sockets on every address ``listener.host`` resolves to."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            listener.host or None,
            listener.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except OSError as exc:
        raise ListenError.of(listener, exc) from exc
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError.of(listener, exc) from exc
    return sockets


class ImplicitTlsListener:
    """A ``submissions`` listener (RFC 8314 §3.3) that runs each TLS handshake itself.

    ``create_server(ssl=…)`` drops a failed handshake silently (asyncio and uvloop log it
    only in debug mode), so this accepts plain sockets and hands each to
    ``connect_accepted_socket`` with the newest context: a failure is logged with the
    client's address and the connection closed, and the listener goes on serving.
    Behind a load balancer (``proxy_protocol``) the PROXY header comes before the
    ClientHello: it is read from the plain socket first, octet-exact (`read_proxy_header`).
    """

    def __init__(self, server: Server, listener: Listener, sockets: list[socket.socket]) -> None:
        self.server = server
        self.listener = listener
        self.sockets = sockets
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: list[asyncio.Task[None]] = []

    @classmethod
    def bind(cls, server: Server, listener: Listener) -> ImplicitTlsListener:
        """Bind every address ``listener.host`` resolves to, like ``create_server``."""
        return cls(server, listener, bind_sockets(listener))

    def start(self) -> None:
        loop = self.server.loop
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    async def _accept(self, listening: socket.socket) -> None:
        loop = self.server.loop
        while True:
            try:
                sock, _ = await loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and friends: back off rather than spin
                log_event(log, "accept-error", level=logging.ERROR, error=str(exc))
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, sock: socket.socket) -> None:
        try:
            peer = sock.getpeername()
        except OSError:
            sock.close()
            return
        ip = unmapped(str(peer[0]))
        client = f"{ip}:{peer[1]}"
        proxied: tuple[str, int] | None = None
        if self.listener.proxy_protocol:
            if proxyproto.trusted(ip, self.server.config.server.proxy_networks):
                header = await read_proxy_header(self.server.loop, sock, PROXY_TIMEOUT)
            else:
                header = proxyproto.Error("not in server.proxy_networks")
            if isinstance(header, proxyproto.Error):
                log_event(
                    log,
                    "proxy-rejected",
                    level=logging.WARNING,
                    client=client,
                    mode=self.listener.mode,
                    reason=header.reason,
                )
                sock.close()
                return
            if header.source is not None:
                proxied = (unmapped(header.source[0]), header.source[1])
                ip, client = proxied[0], f"{proxied[0]}:{proxied[1]}"
        refusal = self.server.admit_handshake(ip)
        context = self.server.tls.context
        if refusal is not None:
            # No SMTP reply is possible before TLS is up: the client expects a handshake.
            reason, detail = refusal
            self.server.refusals.count(reason)
            log_event(
                log,
                "reject",
                client=client,
                mode=self.listener.mode,
                reason=reason,
                detail=detail,
            )
            sock.close()
            return
        if context is None:
            log_event(
                log,
                "reject",
                client=client,
                mode=self.listener.mode,
                reason="no TLS certificate (tls-unavailable)",
            )
            sock.close()
            return
        self.server.handshakes[ip] += 1
        try:
            await self.server.loop.connect_accepted_socket(
                functools.partial(SmtpSession, self.server.context, self.listener, proxied),
                sock,
                ssl=context,
                ssl_handshake_timeout=self.server.config.limits.tls_handshake_timeout,
            )
        except asyncio.CancelledError:  # shutdown while the handshake ran
            sock.close()
            raise
        except Exception as exc:  # a failed handshake ends this connection only
            metrics.TLS_FAILURES.inc()
            log_event(
                log,
                "tls-failed",
                level=logging.WARNING,
                client=client,
                mode=self.listener.mode,
                error=str(exc) or type(exc).__name__,
            )
            sock.close()
        finally:
            self.server.handshakes[ip] -= 1
            if self.server.handshakes[ip] <= 0:
                del self.server.handshakes[ip]

    def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        for task in self._tasks:
            task.cancel()  # handshakes in progress: their sessions never started
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        pending = [*self._accepting, *self._tasks]
        if pending:
            await asyncio.wait(pending)


async def read_proxy_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float
) -> proxyproto.Header | proxyproto.Error:
    """The PROXY header from a plain socket, not one octet past it (a ClientHello follows)."""

    async def read() -> proxyproto.Header | proxyproto.Error:
        buffer = b""
        while isinstance(result := proxyproto.parse(buffer), proxyproto.NeedMore):
            chunk = await loop.sock_recv(sock, result.wanted - len(buffer))
            if not chunk:
                return proxyproto.Error("connection closed before the PROXY header")
            buffer += chunk
        return result

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        return proxyproto.Error(f"no PROXY header within {timeout:g}s")
    except OSError as exc:
        return proxyproto.Error(str(exc) or type(exc).__name__)


def open_auth_state(config: Config) -> tuple[AuthThrottle, ScramDecoys]:
    """The AUTH throttle and the SCRAM decoys, both from files in data_dir.

    Shared by every worker and kept over restarts; made on first use (a parent with
    workers opens them first, so that a problem stops it at start-up).
    """
    auth, data_dir = config.auth, config.server.data_dir
    try:
        table = ThrottleTable.open(data_dir / THROTTLE_FILE)
    except OSError as exc:  # a full disk: serve anyway, with what this process can keep
        log_event(
            log,
            "auth-state-unwritable",
            level=logging.WARNING,
            error=str(exc),
            effect="AUTH failures are counted per process until a restart",
        )
        table = ThrottleTable.in_memory()
    try:
        secret = load_secret(data_dir / SECRET_FILE)
    except OSError as exc:
        log_event(
            log,
            "auth-state-unwritable",
            level=logging.WARNING,
            error=str(exc),
            effect="unknown users' SCRAM salts change at the next restart",
        )
        secret = secrets.token_bytes(32)
    except BaseException:
        table.close()
        raise
    decoys = ScramDecoys(secret)
    throttle = AuthThrottle(table, auth.max_failures, auth.failure_window, auth.lockout)
    return throttle, decoys


def open_rates(config: Config, refusals: Refusals) -> Rates:
    """The per-client and per-user rates, counted in ``<data_dir>/rates``.

    Shared by every worker (a parent with workers opens it first, as the AUTH files);
    on a full disk, counted per process instead.
    """
    table = _open_table(config, RATES_FILE, RATES_SLOTS, "rates-unwritable", "rates")
    return Rates(table, config.limits, config.server.hostname, refusals)


def open_greylist(config: Config) -> Greylist | None:
    """Greylisting's triplets in ``<data_dir>/greylist`` (None: ``antispam.greylist`` off)."""
    if not config.antispam.greylist:
        return None
    table = _open_table(
        config, GREYLIST_FILE, GREYLIST_SLOTS, "greylist-unwritable", "greylisting triplets"
    )
    return Greylist(table, config.antispam.greylist_delay)


def _open_table(config: Config, name: str, slots: int, event: str, what: str) -> ThrottleTable:
    try:
        return ThrottleTable.open(config.server.data_dir / name, slots)
    except OSError as exc:  # a full disk: serve anyway, with what this process can keep
        log_event(
            log,
            event,
            level=logging.WARNING,
            error=str(exc),
            effect=f"{what} are kept per process until a restart",
        )
        return ThrottleTable.in_memory(slots)


def open_refusals(config: Config) -> Refusals:
    """The refusal counters in ``<data_dir>/refusals``, shared by every worker (what
    ``/metrics`` reads); on a full disk, counted per process instead."""
    try:
        return Refusals.open(config.server.data_dir / REFUSALS_FILE)
    except OSError as exc:
        log_event(
            log,
            "refusals-unwritable",
            level=logging.WARNING,
            error=str(exc),
            effect="refusals are counted per process until a restart",
        )
        return Refusals.in_memory()


class Server:
    """Owns the listening sockets and the set of live sessions (the `SessionHost`)."""

    def __init__(
        self,
        config: Config,
        intake: Intake,
        policy: Policy,
        loop: asyncio.AbstractEventLoop,
        dns: Resolver,
        tls: TlsManager | None = None,  # loaded before a drop of root (``[server] user``)
    ) -> None:
        self.config = config
        self.loop = loop
        self.dns = dns
        self.hostname = config.server.hostname
        self.extensions = smtp.Extensions(size=config.limits.message_size)
        self._extensions_for: dict[tuple[str, bool], smtp.Extensions] = {}
        self.tls = tls or TlsManager(config)
        throttle, decoys = open_auth_state(config)
        self.auth = Authenticator(policy, throttle, decoys)
        self.refusals = open_refusals(config)
        self.rates = open_rates(config, self.refusals)
        # The inbound checks (SPF, DKIM, DMARC, ARC) on the shared resolver; sessions get
        # an intake that runs them, the manager's own (DSN notices) does not.
        self.checker = Checker(ResolverLookups(dns))
        intake = Intake(config, intake.spool, intake.submitter, self.checker)
        self.context = SessionContext(
            loop=loop,
            hostname=self.hostname,
            limits=config.limits,
            strict_paths=config.policy.strict_paths,
            bare_lf=config.policy.bare_lf,
            policy=policy,
            auth=self.auth,
            intake=intake,
            submitter=intake.submitter,
            tls=self.tls,
            rdns=ReverseDns(dns, enabled=config.server.reverse_dns),
            host=self,
            rates=self.rates,
            refusals=self.refusals,
            antispam=Antispam(config.antispam, dns),
            greylist=open_greylist(config),
            proxy_networks=config.server.proxy_networks,
        )
        self.sessions: set[SmtpSession] = set()
        self._per_ip: Counter[str] = Counter()
        # Implicit-TLS handshakes in progress: they hold sockets before any session exists.
        self.handshakes: Counter[str] = Counter()
        self._servers: list[_Listening] = []
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}"
        self._sweeper: asyncio.Task[None] | None = None
        self._exempt_networks = (*config.limits.exempt_networks, *config.domains.relay_networks)

    def extensions_for(self, mode: str, tls: bool) -> smtp.Extensions:
        """What EHLO offers on a listener of ``mode``, before or after TLS is up.

        Made once per (mode, tls): every session asks, and the answer never changes.
        """
        extensions = self._extensions_for.get((mode, tls))
        if extensions is None:
            auth = self.config.auth
            offer_auth = tls or auth.allow_plaintext_auth
            extensions = self._extensions_for[mode, tls] = self.extensions.with_changes(
                starttls=mode in STARTTLS_MODES and not tls and self.tls.context is not None,
                auth=auth.mechanisms if offer_auth else (),
                auth_needs_tls=not offer_auth,
            )
        return extensions

    def reload_tls(self) -> None:
        """SIGHUP: new sessions get the reloaded certificate, running ones keep theirs."""
        if self.tls.reload():
            self._extensions_for.clear()  # STARTTLS may be offered now (tls-unavailable before)

    def reconfigure(self, config: Config, policy: Policy) -> None:
        """SIGHUP with a new configuration (petrel.reload): new sessions get a new
        `SessionContext`, running ones keep a reference to theirs. The listeners stay.
        Admission (connection caps, exempt networks) follows the new values at once.
        """
        self.config = config
        self.hostname = config.server.hostname
        self.extensions = smtp.Extensions(size=config.limits.message_size)
        self._extensions_for.clear()
        self.tls.reconfigure(config)
        auth, old = config.auth, self.auth.throttle
        throttle = AuthThrottle(
            old.table, auth.max_failures, auth.failure_window, auth.lockout, old.clock
        )
        self.auth = Authenticator(policy, throttle, self.auth.decoys)
        ctx = self.context
        self.rates = Rates(
            self.rates.table, config.limits, self.hostname, self.refusals, self.rates.clock
        )
        greylist = ctx.greylist
        if greylist is not None and config.antispam.greylist:
            greylist = Greylist(greylist.table, config.antispam.greylist_delay, greylist.clock)
        else:
            greylist = open_greylist(config)
        self._exempt_networks = (*config.limits.exempt_networks, *config.domains.relay_networks)
        self.context = dataclasses.replace(
            ctx,
            hostname=self.hostname,
            limits=config.limits,
            strict_paths=config.policy.strict_paths,
            bare_lf=config.policy.bare_lf,
            policy=policy,
            auth=self.auth,
            intake=Intake(config, ctx.intake.spool, ctx.intake.submitter, self.checker),
            rdns=ReverseDns(self.dns, enabled=config.server.reverse_dns),
            rates=self.rates,
            antispam=Antispam(config.antispam, self.dns),
            greylist=greylist,
            proxy_networks=config.server.proxy_networks,
        )

    def new_session(self, listener: Listener) -> SmtpSession:
        """A listener's protocol factory: the context in force when the client connects."""
        return SmtpSession(self.context, listener)

    def new_session_id(self) -> str:
        return f"{self._id_prefix}.{next(self._ids):x}"

    async def start(
        self, inherited: dict[int, list[socket.socket]] | None = None
    ) -> list[tuple[str, int, str]]:
        """Bind every listener; returns (host, port, mode) as actually bound.

        ``inherited`` maps the index of a listener in ``config.listeners`` to sockets
        already bound and listening (a worker process serves its parent's sockets);
        listeners absent from it are not served.
        """
        bound: list[tuple[str, int, str]] = []
        for index, listener in enumerate(self.config.listeners):
            if listener.mode not in SMTP_MODES:  # http: petrel.web serves it
                continue
            if inherited is not None and index not in inherited:
                continue
            sockets: Sequence[socket.socket]
            if listener.mode in IMPLICIT_TLS_MODES:
                if inherited is None:
                    tls_listener = ImplicitTlsListener.bind(self, listener)
                else:
                    tls_listener = ImplicitTlsListener(self, listener, inherited[index])
                tls_listener.start()
                self._servers.append(tls_listener)
                sockets = tls_listener.sockets
            elif inherited is None:
                try:
                    server = await self.loop.create_server(
                        functools.partial(self.new_session, listener),
                        listener.host,
                        listener.port,
                        reuse_address=True,
                        backlog=_BACKLOG,
                    )
                except OSError as exc:
                    raise ListenError.of(listener, exc) from exc
                self._servers.append(server)
                sockets = server.sockets
            else:
                sockets = inherited[index]
                for sock in inherited[index]:
                    server = await self.loop.create_server(
                        functools.partial(self.new_session, listener),
                        sock=sock,
                        backlog=_BACKLOG,
                    )
                    self._servers.append(server)
            for sock in sockets:
                host, port = sock.getsockname()[:2]
                bound.append((host, port, listener.mode))
                if inherited is None:
                    address = join_address(host, port)
                    if listener.proxy_protocol:
                        log_event(
                            log, "listening", address=address, mode=listener.mode, proxy="yes"
                        )
                    else:
                        log_event(log, "listening", address=address, mode=listener.mode)
        self._sweeper = self.loop.create_task(self._sweep())
        return bound

    # -- connection accounting ---------------------------------------------------------

    @property
    def reserve(self) -> int:
        """Slots kept for clients that hold none yet: a tenth of ``limits.connections``.

        Without it, a flood from many addresses, each under its per-IP cap, takes the
        last slots and every new client gets 421.
        """
        return self.config.limits.connections // 10

    def _crowded(self, in_use: int, held: int) -> bool:
        """Full, or into the reserve for a client that already holds ``held`` slots."""
        connections = self.config.limits.connections
        return in_use >= connections or (held > 0 and in_use >= connections - self.reserve)

    def exempt(self, ip: str) -> bool:
        """Is ``ip`` in ``limits.exempt_networks`` or ``domains.relay_networks``?

        Such clients (loopback by default: a local submitter or a content filter) skip
        the per-IP caps, the reserve rule and the per-client rates (not the per-user
        one), as Postfix exempts mynetworks; they still count toward
        ``limits.connections``.
        """
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._exempt_networks)

    def admit(self, session: SmtpSession) -> smtp.Reply | None:
        """None to accept the session, else the reply (logged and counted here)."""
        refused = self._refusal(session)
        if isinstance(refused, smtp.Reply):  # a rate: logged as rate-limit already
            return refused
        if refused is not None:
            reason, text = refused
            answer = smtp.reply(421, "4.7.0", f"{self.hostname} {text}")
            self.refusals.count(reason)
            log_event(
                log, "reject", session=session.id, client=session.peer_ip, reason=reason,
                reply=str(answer),
            )
            return answer
        self.sessions.add(session)
        self._per_ip[session.peer_ip] += 1
        return None

    def _refusal(self, session: SmtpSession) -> smtp.Reply | tuple[Reason, str] | None:
        limits = self.config.limits
        ip = session.peer_ip
        exempt = session.exempt
        if self._crowded(len(self.sessions), 0 if exempt else self._per_ip[ip]):
            return "too-many-connections", "Too many connections, try again later"
        if not exempt and self._per_ip[ip] >= limits.connections_per_ip:
            return (
                "too-many-connections-per-ip",
                "Too many connections from your address, try again later",
            )
        if self.auth.locked(ip):
            return "auth-lockout", "Too many failed authentications, try again later"
        if not exempt:  # counted last: a connection refused above is not counted
            return self.rates.connection(ip, session.id)
        return None

    def admit_handshake(self, ip: str) -> tuple[Reason, str] | None:
        """Like ``admit``, for a connection whose TLS handshake has not finished yet.

        Handshakes have their own, smaller budget: ``limits.tls_handshakes_per_ip`` per
        client, and past a quarter of ``limits.connections`` in all only a client's first
        one. Sockets that never send a ClientHello cannot fill the server, and a new
        client still gets its handshake. A locked-out client (AUTH) is not refused here:
        after its handshake the session's `admit` answers ``421 4.7.0`` over TLS, a
        reply its user can read instead of a reset.
        """
        limits = self.config.limits
        pending = self.handshakes[ip]
        in_use = len(self.sessions) + self.handshakes.total()
        full: tuple[Reason, str] = ("too-many-connections", "Too many connections")
        if self.exempt(ip):
            return full if in_use >= limits.connections else None
        if self._crowded(in_use, self._per_ip[ip] + pending):
            return full
        if pending >= limits.tls_handshakes_per_ip:
            return "too-many-connections-per-ip", "Too many TLS handshakes from this address"
        if pending and self.handshakes.total() >= limits.connections // 4:
            return "too-many-connections", "Too many TLS handshakes in progress"
        if self._per_ip[ip] + pending >= limits.connections_per_ip:
            return "too-many-connections-per-ip", "Too many connections from this address"
        return None

    def release(self, session: SmtpSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self._per_ip[session.peer_ip] -= 1
            if self._per_ip[session.peer_ip] <= 0:
                del self._per_ip[session.peer_ip]

    async def _sweep(self) -> None:
        """Close sessions past a deadline with 421 4.4.2 (RFC 5321 §4.5.3.2)."""
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            timeout = smtp.reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded")
            now = self.loop.time()
            for session in list(self.sessions):
                reason = session.timed_out(now)
                if reason is not None:
                    log_event(
                        log, "timeout", session=session.id, client=session.peer_ip, reason=reason
                    )
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
        self.checker.close()


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
