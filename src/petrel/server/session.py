"""One SMTP session: an ``asyncio.Protocol`` driving ``smtp.ServerConnection``.

The session is the protocol pump plus TLS. It owns no protocol logic and decides no
policy: it turns events into replies by asking the policy (``Policy.check_mail``,
``check_rcpt``, ``check_etrn``, VRFY/EXPN; ``Authenticator`` for AUTH) and intake, and
it writes all replies produced by one read in one ``write`` (RFC 2920 pipelining).
Everything it uses comes in one `SessionContext`. On a ``proxy_protocol`` listener the
session first waits (at most ``PROXY_TIMEOUT``) for the load balancer's PROXY header, and
only then admits the client it names and greets it. Work that must wait — the
group-committed fsync behind a 250, the reverse DNS behind an EHLO reply, a password
check — pauses event processing (and reading) until it is done.

One client must not hold the event loop or our memory: a turn handles at most
``EVENTS_PER_TURN`` events and leaves the rest for a later loop iteration, and the
session reads nothing while it has unprocessed input, waits for work, or has more than
``WRITE_HIGH_WATER`` octets of replies the client has not taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

from petrel import metrics, proxyproto, smtp
from petrel.config import IPNetwork, LimitsSection, Listener
from petrel.intake import (
    Accepted,
    CheckRefused,
    Draft,
    Intake,
    Origin,
    Submitter,
    TooManyHops,
    new_envelope,
    rfc5322_date,
)
from petrel.log import log_event
from petrel.mailauth.checks import SpfPair
from petrel.policy import Client, Policy, mail_auth
from petrel.policy.antispam import PREGREET, Antispam, Listed
from petrel.policy.auth import Authenticator, Granted, LockedOut, Refused, Verdict
from petrel.policy.greylist import Greylist
from petrel.policy.rates import Rates
from petrel.policy.refusals import Reason, Refusals
from petrel.policy.throttle import Attempt
from petrel.queue import Envelope
from petrel.queue.spool import MIN_FREE
from petrel.queue.store import StoreUnavailableError
from petrel.smtp import replies as texts

from .modes import IMPLICIT_TLS_MODES, SUBMISSION_MODES
from .rdns import ReverseDns
from .tls import TlsManager

log = logging.getLogger("petrel.smtpd")

# Events handled per turn before other sessions get the loop (RFC 2920 groups are far
# smaller: a pipelined transaction is MAIL, its RCPTs and DATA).
EVENTS_PER_TURN = 64
# Unsent replies past which the session stops reading (pause_writing).
WRITE_HIGH_WATER = 64 * 1024
# The kernel's send buffer for a session's socket. Left to autotuning it grows to
# megabytes of replies a client never reads before pause_writing can notice; replies are
# small, so a fixed buffer costs no throughput.
SEND_BUFFER = 64 * 1024
# Message text gets this long (at most data_timeout) before limits.min_data_rate applies.
DATA_RATE_GRACE = 10.0
# How long a proxy_protocol listener waits for the PROXY header before it closes.
PROXY_TIMEOUT = 5.0


_INTERNAL_ERROR = smtp.reply(421, "4.3.0", "Internal error, closing connection")
_NO_STORAGE = smtp.reply(452, "4.3.1", "Insufficient system storage, try again later")
_STORE_DOWN = smtp.reply(451, "4.3.0", "Queue storage unavailable, try again later")
_TOO_MANY_HOPS = smtp.reply(554, "5.4.6", "Too many hops (Received header fields); mail loop?")


class SessionHost(Protocol):
    """What a session asks of the server that accepted it: a slot, an id, the offer."""

    def admit(self, session: SmtpSession) -> smtp.Reply | None: ...

    def exempt(self, ip: str) -> bool: ...

    def release(self, session: SmtpSession) -> None: ...

    def new_session_id(self) -> str: ...

    def extensions_for(self, mode: str, tls: bool) -> smtp.Extensions: ...


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Everything a session uses, made once per server and shared by its sessions."""

    loop: asyncio.AbstractEventLoop
    hostname: str
    limits: LimitsSection
    strict_paths: bool
    bare_lf: str  # [policy] bare_lf: "normalize" or "reject"
    policy: Policy
    auth: Authenticator
    intake: Intake  # where every accepted message goes
    submitter: Submitter  # ETRN: the queue manager, or a worker's proxy of it
    tls: TlsManager
    rdns: ReverseDns
    host: SessionHost
    rates: Rates  # per-client (not for exempt ones) and per-user rates
    refusals: Refusals  # every refusal counted by reason (for /metrics)
    antispam: Antispam  # [antispam]: DNSBL, pregreet, HELO and sender checks
    greylist: Greylist | None  # None: antispam.greylist is off
    proxy_networks: tuple[IPNetwork, ...] = ()  # [server] proxy_networks


class Transaction:
    """The envelope being built between MAIL and the end of the message."""

    __slots__ = ("checks", "draft", "params", "recipients", "sender", "storage_failed")

    def __init__(
        self,
        sender: str,
        params: smtp.MailParams,
        checks: asyncio.Task[SpfPair] | None = None,
    ) -> None:
        self.sender = sender
        self.params = params
        self.recipients: list[Accepted] = []
        self.draft: Draft | None = None  # created at the first text
        self.storage_failed = False  # the spool could not take the text: answer 452 at the end
        self.checks = checks  # the inbound checks' SPF, begun at MAIL (the draft takes it)


class SmtpSession(asyncio.Protocol):
    __slots__ = (
        "_attempt",
        "_backlog",
        "_busy",
        "_closing",
        "_early",
        "_greet_timer",
        "_held",
        "_line_started",
        "_out",
        "_proxy",
        "_proxy_timer",
        "_rdns",
        "_screening",
        "_start_tls",
        "_text_bytes",
        "_text_started",
        "_write_paused",
        "auth_user",
        "conn",
        "ctx",
        "exempt",
        "id",
        "last_active",
        "listener",
        "peer_ip",
        "peer_port",
        "proxied",
        "tls_info",
        "transport",
        "txn",
        "via",
    )

    def __init__(
        self,
        ctx: SessionContext,
        listener: Listener,
        proxied: tuple[str, int] | None = None,
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        # Implicit TLS behind a proxy: the client address of the PROXY header, read by the
        # listener before the handshake (None: a LOCAL header, use the real peer).
        self.proxied = proxied
        self.via: str | None = None  # the load balancer's address, once its header is read
        self._proxy: bytes | None = None  # the PROXY header so far, while it is awaited
        self._proxy_timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.conn: smtp.ServerConnection | None = None
        self.txn: Transaction | None = None
        self.peer_ip = ""
        self.peer_port = 0
        self.exempt = False  # limits.exempt_networks or relay_networks: no per-client rates
        self.id = ""
        self._out: list[bytes] = []
        self._busy = False
        self._backlog: asyncio.Handle | None = None  # the next turn, when one is due
        self._write_paused = False
        self._closing = False
        self._rdns: asyncio.Future[tuple[str | None, bool]] | None = None
        self._start_tls = False
        self._early: list[bytes] | None = None  # set while a STARTTLS handshake runs
        # Before the 220 of a screened client: greet_delay's timer, the DNSBL lookups.
        self._held = False  # the 220 is held for them (one test per read when not)
        self._greet_timer: asyncio.TimerHandle | None = None
        self._screening: asyncio.Task[Listed | None] | None = None
        self.tls_info: str | None = None  # "TLSv1.3 with cipher …" once TLS is up
        self.auth_user: str | None = None  # the user address once AUTH succeeded
        self._attempt: Attempt | None = None  # a SCRAM exchange past the salt, not yet done
        self.last_active = 0.0
        # When the current command line's first octet came (None: no partial line).
        self._line_started: float | None = None
        # When the message text began, and the octets read since (min_data_rate).
        self._text_started: float | None = None
        self._text_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's is no subclass
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self.peer_ip, self.peer_port = unmapped(peer[0]), peer[1]
        ctx = self.ctx
        self.id = ctx.host.new_session_id()
        self.last_active = ctx.loop.time()
        if self.listener.proxy_protocol:
            if self.listener.mode in IMPLICIT_TLS_MODES:  # the listener read the header
                self._proxied_by(self.proxied)
            elif not proxyproto.trusted(self.peer_ip, ctx.proxy_networks):
                self._proxy_failed("not in server.proxy_networks")
                return
            else:
                self._proxy = b""
                self._proxy_timer = ctx.loop.call_later(PROXY_TIMEOUT, self._proxy_timed_out)
                return
        self._start(transport)

    def _start(self, transport: asyncio.Transport) -> None:
        """Admit the client and greet it (on a proxy listener: once the header is read)."""
        ctx = self.ctx
        self.exempt = ctx.host.exempt(self.peer_ip)  # the carried address, behind a proxy
        refusal = ctx.host.admit(self)  # logged and counted by the host
        if refusal is not None:
            metrics.rejected(refusal.status)
            transport.write(refusal.to_bytes())
            transport.close()
            return
        limits = ctx.limits
        self.conn = smtp.ServerConnection(
            ctx.hostname,
            extensions=ctx.host.extensions_for(self.listener.mode, tls=False),
            max_recipients=limits.recipients,
            max_errors=limits.errors,
            max_junk=limits.junk_commands,
            strict_paths=ctx.strict_paths,
            normalize_bare_lf=ctx.bare_lf == "normalize",
            lmtp=self.listener.mode == "lmtp",
        )
        self._rdns = ctx.rdns.lookup(self.peer_ip)
        self._limit_buffers(transport)
        metrics.connection(self.listener.mode).inc()
        metrics.SESSIONS.inc()
        client = f"{self.peer_ip}:{self.peer_port}"
        if self.via is None:
            log_event(log, "connect", session=self.id, client=client)
        else:
            log_event(log, "connect", session=self.id, client=client, proxy=self.via)
        if self.listener.mode in IMPLICIT_TLS_MODES:
            # RFC 8314: the listener did the handshake before connection_made.
            self._tls_up(transport)
            self.conn.implicit_tls()
            self.conn.offer(ctx.host.extensions_for(self.listener.mode, tls=True))
        antispam = ctx.antispam
        if antispam.screens and not self.exempt and self.listener.mode == "smtp":
            self._screen(antispam)
            return
        transport.write(self.conn.send(self._greeting()))

    # -- before the 220 (postscreen: greet_delay, pregreet, DNSBL) -------------------------

    def _screen(self, antispam: Antispam) -> None:
        """Hold the 220 for ``greet_delay`` while the DNSBL lookups run (they overlap)."""
        loop = self.ctx.loop
        self._held = True
        if antispam.dnsbl:
            self._screening = loop.create_task(antispam.screen(self.peer_ip))
        if antispam.greet_delay > 0:
            self._greet_timer = loop.call_later(antispam.greet_delay, self._greet_due)
        else:
            self._greet_due()

    def _greet_due(self) -> None:
        self._greet_timer = None
        screening = self._screening
        if screening is not None and not screening.done():
            screening.add_done_callback(lambda _: self._greet())  # at most DNSBL_WAIT more
        else:
            self._greet()

    def _greet(self) -> None:
        """The delay is over and the lists have answered: the 220, or the DNSBL's 554."""
        if not self._held:  # cancelled meanwhile (the client left, shutdown)
            return
        screening, self._screening = self._screening, None
        self._held = False
        conn = self.conn
        if conn is None or self._closing:
            return
        listed = None
        if screening is not None and not screening.cancelled():
            error = screening.exception()
            if error is not None:  # a bug, never a reason to refuse mail
                log.error("session %s: DNSBL lookup failed", self.id, exc_info=error)
            else:
                listed = screening.result()
        self.last_active = self.ctx.loop.time()
        if listed is not None:
            self._refuse_at_connect(
                "dnsbl", listed.reply, zone=listed.zone, score=str(listed.score)
            )
            return
        self._out.append(conn.send(self._greeting()))
        self._process()  # commands a client sent early (pregreet = "off") are due now

    def _pregreet(self, data: bytes) -> None:
        """The client talked before our 220: postscreen's pregreet test failed."""
        first = data.split(b"\n", 1)[0].rstrip(b"\r")[:40].decode("ascii", "backslashreplace")
        self._refuse_at_connect("pregreet", PREGREET, octets=str(len(data)), sent=first)

    def _refuse_at_connect(self, reason: Reason, answer: smtp.Reply, **fields: str) -> None:
        self._cancel_greeting()
        assert self.conn is not None
        self.ctx.refusals.count(reason)
        log_event(
            log,
            "reject",
            logging.INFO,
            session=self.id,
            client=self.peer_ip,
            reason=reason,
            reply=str(answer),
            **fields,
        )
        self._out.append(self.conn.send(answer))  # not a 220: the core is CLOSED
        self._closing = True
        self._flush()

    def _cancel_greeting(self) -> None:
        if self._greet_timer is not None:
            self._greet_timer.cancel()
            self._greet_timer = None
        if self._screening is not None:
            self._screening.cancel()
            self._screening = None
        self._held = False

    # -- the PROXY header ----------------------------------------------------------------

    def _on_proxy_data(self, data: bytes) -> None:
        buffer = self._proxy = (self._proxy or b"") + data
        result = proxyproto.parse(buffer)
        if isinstance(result, proxyproto.NeedMore):
            return
        self._proxy = None
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
            self._proxy_timer = None
        if isinstance(result, proxyproto.Error):
            self._proxy_failed(result.reason)
            return
        self._proxied_by(result.source)
        assert self.transport is not None
        self._start(self.transport)
        rest = buffer[result.length :]
        if rest and self.conn is not None:
            self.data_received(rest)  # the client's first command overtook the greeting

    def _proxied_by(self, source: tuple[str, int] | None) -> None:
        """The PROXY header is read: from now on the client is the one it names."""
        self.via = f"{self.peer_ip}:{self.peer_port}"
        if source is not None:  # else LOCAL or UNKNOWN: the balancer itself
            self.peer_ip, self.peer_port = unmapped(source[0]), source[1]

    def _proxy_timed_out(self) -> None:
        self._proxy_timer = None
        if self._proxy is not None:
            self._proxy = None
            self._proxy_failed(f"no PROXY header within {PROXY_TIMEOUT:g}s")

    def _proxy_failed(self, reason: str) -> None:
        """No SMTP reply: the other end may be a load balancer, not a client."""
        log_event(
            log,
            "proxy-rejected",
            level=logging.WARNING,
            session=self.id,
            client=f"{self.peer_ip}:{self.peer_port}",
            mode=self.listener.mode,
            reason=reason,
        )
        if self.transport is not None:
            self.transport.close()

    @staticmethod
    def _limit_buffers(transport: asyncio.Transport) -> None:
        """Make a client that does not read its replies visible early (pause_writing)."""
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a socket we may not tune: autotuning stays
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def _greeting(self) -> smtp.Reply:
        return texts.greeting(self.ctx.hostname, rfc5322_date())

    def data_received(self, data: bytes) -> None:
        if self._proxy is not None:
            self._on_proxy_data(data)
            return
        if self.conn is None:
            return
        if self._early is not None:
            # Decrypted bytes that overtook the end of start_tls: legitimate, keep them.
            self._early.append(data)
            return
        conn = self.conn
        if self._held:  # before our 220
            if self.ctx.antispam.pregreet:
                if not self._closing:
                    self._pregreet(data)
            else:
                conn.receive_data(data)  # answered once greeted; read no more until then
                if self.transport is not None:
                    self.transport.pause_reading()
            return
        now = self.last_active = self.ctx.loop.time()
        if self._text_started is not None:
            self._text_bytes += len(data)
        elif not conn.buffered:
            self._line_started = now  # the first octet of a command line
        conn.receive_data(data)
        if self._ready():
            self._process()

    def eof_received(self) -> bool:
        if self._proxy is not None:
            self._proxy = None
            self._proxy_failed("connection closed before the PROXY header")
            return False
        if self._held:  # gone before its 220: nothing to answer
            self._cancel_greeting()
            return False
        if self.conn is not None:
            self.conn.receive_data(b"")
            if self._ready():
                self._process()
        # We close ourselves once pending replies are written (TLS transports ignore this).
        return self.tls_info is None

    def connection_lost(self, exc: Exception | None) -> None:
        # Also called by a failed TLS handshake, where asyncio would not: idempotent.
        self._proxy = None
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
            self._proxy_timer = None
        self._cancel_greeting()
        self._abort_message()
        if self._attempt is not None:  # a SCRAM exchange walked away from: it failed
            self.ctx.auth.abandoned(self._attempt)
            self._attempt = None
        if self.conn is not None:
            self.ctx.host.release(self)
            metrics.SESSIONS.dec()
            log_event(log, "disconnect", session=self.id, client=self.peer_ip)
        self.conn = None

    def pause_writing(self) -> None:
        # A client that pipelines without reading our replies must not make us buffer
        # unboundedly: stop reading (and answering) until it catches up.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._ready():
            self._process()

    # -- event loop ---------------------------------------------------------------------

    def _ready(self) -> bool:
        """May a turn run now? Not while work or a turn is pending, or replies pile up."""
        return not (self._busy or self._write_paused or self._backlog is not None)

    def _update_reading(self) -> None:
        """Read only when everything received so far is answered and replies drain."""
        transport = self.transport
        if transport is None or self._early is not None or self._closing:
            return
        if self._busy or self._write_paused or self._backlog is not None:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _next_turn(self) -> None:
        self._backlog = None
        if self._ready():
            self._process()

    def _process(self) -> None:
        """One turn: at most EVENTS_PER_TURN events, their replies in one write."""
        conn = self.conn
        if conn is None:
            return
        handled = 0
        try:
            while handled < EVENTS_PER_TURN and not self._busy:
                event = conn.next_event()
                if event is smtp.NEED_DATA or event is smtp.PAUSED:
                    break
                handled += 1
                result = self._handle(event)
                if result is not None:
                    self._out.append(conn.send(result))
                if conn.state is smtp.State.CLOSED:
                    self._closing = True
                    break
            else:
                if not self._busy:  # the turn is used up: other sessions run first
                    self._backlog = self.ctx.loop.call_soon(self._next_turn)
        except Exception:
            log.exception("session %s: internal error", self.id)
            self._abort_message()
            self._out.append(conn.send(_INTERNAL_ERROR))
            self._closing = True
        self._track_deadlines(conn, progressed=handled > 0)
        self._flush()
        self._update_reading()
        if self._start_tls and not self._closing:
            self._start_tls = False
            self._begin_tls()

    def _track_deadlines(self, conn: smtp.ServerConnection, progressed: bool) -> None:
        """Start or stop the clocks of ``timed_out`` as the state changes.

        After a turn that consumed input, what is left is a new line (or lines still to
        be handled): its clock starts now. A turn that consumed nothing keeps the clock
        of the partial line, however many octets were added to it.
        """
        if self.in_message:
            self._line_started = None
            if self._text_started is None:
                self._text_started = self.ctx.loop.time()
                self._text_bytes = 0
            return
        self._text_started = None
        if not conn.buffered:
            self._line_started = None
        elif progressed or self._line_started is None:
            self._line_started = self.ctx.loop.time()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
        if self._closing:
            if self._backlog is not None:
                self._backlog.cancel()
                self._backlog = None
            if self._write_paused:
                transport.abort()  # it reads nothing: a close would wait for it forever
            else:
                transport.close()

    def _wait(self, work: Awaitable[smtp.Reply], after: Callable[[], None] | None = None) -> None:
        """Pause the session until ``work`` yields the reply to the pending event."""
        self._busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.ctx.loop.create_task(self._finish(work, after))

    async def _finish(self, work: Awaitable[smtp.Reply], after: Callable[[], None] | None) -> None:
        try:
            result = await work
        except Exception:
            log.exception("session %s: internal error", self.id)
            result = _INTERNAL_ERROR
        self._busy = False
        conn = self.conn
        if conn is None:  # the client went away while we worked
            return
        self._out.append(conn.send(result))
        if after is not None:
            after()
        if conn.state is smtp.State.CLOSED:
            self._closing = True
        if self._write_paused:
            self._flush()  # the rest waits for resume_writing
            self._update_reading()
        else:
            self._process()

    # -- handlers: each returns the reply, or None when there is none (yet) -------------

    def _handle(self, event: smtp.Event) -> smtp.Reply | None:
        """The handler table: one case per event type, the most frequent first."""
        match event:
            case smtp.DataChunk():
                self._on_chunk(event)  # no reply (yet)
                return None
            case smtp.Rcpt():
                return self._on_rcpt(event)
            case smtp.Mail():
                return self._on_mail(event)
            case smtp.Data():
                return self._on_data(event)
            case smtp.EndOfData():
                return self._on_end(event)
            case smtp.Helo() | smtp.Ehlo():
                return self._on_helo(event)
            case smtp.Rset():
                return self._on_rset(event)
            case smtp.Noop():
                return texts.OK
            case smtp.Quit():
                return self._on_quit(event)
            case smtp.ChunkReceived():
                return self._on_chunk_received(event)
            case smtp.MessageRejected():
                return self._on_rejected(event)
            case smtp.BadCommand():  # AuthCancelled too
                return self._on_bad(event)
            case smtp.AuthChallenge():
                return self._on_auth_challenge(event)
            case smtp.AuthCredentials():
                self._on_auth_credentials(event)  # no reply (yet)
                return None
            case smtp.AuthLookup():
                return self._on_auth_lookup(event)
            case smtp.AuthOutcome():
                self._on_auth_outcome(event)  # no reply (yet)
                return None
            case smtp.StartTls():
                return self._on_starttls(event)
            case smtp.Vrfy():
                return self.ctx.policy.vrfy(event.argument, self._client())
            case smtp.Expn():
                return self.ctx.policy.expn(event.argument, self._client())
            case smtp.Help():
                return smtp.help_reply(event.topic)
            case smtp.Verb():
                return texts.VERBOSE
            case smtp.Etrn():
                return self._on_etrn(event)
            case smtp.ConnectionClosed():
                self._on_closed(event)  # no reply (yet)
                return None
        raise smtp.LocalProtocolError(f"no handler for {event!r}")

    def _client(self) -> Client:
        assert self.conn is not None
        return Client(self.peer_ip, self.conn.authenticated)

    def _on_helo(self, event: smtp.Helo | smtp.Ehlo) -> smtp.Reply | None:
        self.txn = None
        self._abort_message()
        rdns = self._rdns
        assert rdns is not None
        if rdns.done():
            return self._hello_reply(event)
        self._wait(self._hello_after_rdns(event, rdns))
        return None

    async def _hello_after_rdns(
        self, event: smtp.Helo | smtp.Ehlo, rdns: asyncio.Future[tuple[str | None, bool]]
    ) -> smtp.Reply:
        await rdns
        return self._hello_reply(event)

    def _hello_reply(self, event: smtp.Helo | smtp.Ehlo) -> smtp.Reply:
        assert self._rdns is not None and self.conn is not None
        name, confirmed = self._rdns.result()
        forged = " (may be forged)" if name and not confirmed else ""
        first = (
            f"{self.ctx.hostname} Hello {event.domain} [{self.peer_ip}]{forged},"
            " pleased to meet you"
        )
        if isinstance(event, smtp.Ehlo):
            return self.conn.ehlo_reply(first)
        return smtp.Reply(250, (first,))

    @property
    def submission(self) -> bool:
        return self.listener.mode in SUBMISSION_MODES

    @property
    def _checked(self) -> bool:
        """Do the [antispam] checks apply? Not to exempt or authenticated clients."""
        return not self.exempt and self.auth_user is None

    def _on_mail(self, event: smtp.Mail) -> smtp.Reply | None:
        sender = "" if event.sender is None else str(event.sender)
        refusal = self.ctx.policy.check_mail(
            self._client(), sender, self.auth_user, self.submission
        )
        if refusal is not None:
            if self.auth_user is not None:  # not the 530: a sender the user does not own
                log_event(log, "sender-reject", session=self.id, user=self.auth_user, sender=sender)
            metrics.rejected(refusal.status)
            return refusal
        antispam = self.ctx.antispam
        if antispam.helo_check and self._checked and self.conn is not None:
            refusal = antispam.check_helo(self.conn.helo or "")
            if refusal is not None:
                return self._sender_refused("non-fqdn-helo", sender, refusal)
        declared = event.params.size or 0  # RFC 1870 §6.1: 452 when SIZE= will not fit now
        if not self.ctx.intake.has_room(declared):
            log_event(
                log,
                "sender-reject",
                session=self.id,
                sender=sender,
                reply=str(_NO_STORAGE),
                reason=f"under {declared + MIN_FREE} octets free for the spool",
            )
            metrics.rejected(_NO_STORAGE.status)
            return _NO_STORAGE
        if antispam.sender_check and sender and self._checked:
            self._wait(self._mail_after_sender_check(event, sender))
            return None
        return self._start_transaction(event, sender)

    async def _mail_after_sender_check(self, event: smtp.Mail, sender: str) -> smtp.Reply:
        refusal = await self.ctx.antispam.check_sender(sender)
        if refusal is not None:
            return self._sender_refused("unknown-sender-domain", sender, refusal)
        if self.conn is None:  # gone while DNS answered: no message to count (nor reply)
            return texts.sender_ok(sender)
        return self._start_transaction(event, sender)

    def _sender_refused(self, reason: Reason, sender: str, refusal: smtp.Reply) -> smtp.Reply:
        self.ctx.refusals.count(reason)
        log_event(
            log, "sender-reject", session=self.id, sender=sender, reason=reason, reply=str(refusal)
        )
        return refusal

    def _start_transaction(self, event: smtp.Mail, sender: str) -> smtp.Reply:
        # Counted here, once the sender is accepted: Postfix counts a message at MAIL too.
        limited = self.ctx.rates.message(
            None if self.exempt else self.peer_ip, self.auth_user, self.id
        )
        if limited is not None:
            return limited
        checks = None
        if self.ctx.policy.checks_inbound(self._client(), self.listener.mode):
            assert self.conn is not None
            checks = self.ctx.intake.start_checks(self.peer_ip, sender, self.conn.helo or "")
        self.txn = Transaction(sender, event.params, checks)
        return texts.sender_ok(sender)

    def _on_rcpt(self, event: smtp.Rcpt) -> smtp.Reply:
        assert self.txn is not None
        if not self.exempt:  # before the recipient's checks: unknown ones count too
            limited = self.ctx.rates.recipient(self.peer_ip, self.id)
            if limited is not None:
                return limited
        policy = self.ctx.policy
        resolved = policy.check_rcpt(event.recipient, self._client())
        if isinstance(resolved, smtp.Reply):
            log_event(
                log, "rcpt-reject", session=self.id, rcpt=str(event.recipient), reply=str(resolved)
            )
            metrics.rejected(resolved.status)
            return resolved
        greylist = self.ctx.greylist
        if greylist is not None and self._checked:
            refusal = greylist.check(self.peer_ip, self.txn.sender, str(event.recipient))
            if refusal is not None:
                self.ctx.refusals.count("greylist")
                log_event(
                    log,
                    "rcpt-reject",
                    session=self.id,
                    rcpt=str(event.recipient),
                    reason="greylist",
                    reply=str(refusal),
                )
                return refusal
        original = policy.canonical(event.recipient)
        params = event.params
        self.txn.recipients.append(Accepted(original, resolved, params.orcpt, params.notify))
        return texts.recipient_ok(str(event.recipient))

    def _on_data(self, event: smtp.Data) -> smtp.Reply:
        return texts.START_DATA if self._start_message() is not None else _NO_STORAGE

    def _on_chunk(self, event: smtp.DataChunk) -> None:
        draft = self._start_message()
        if draft is None:
            return
        try:
            draft.write(event.data)
        except OSError as exc:  # a full spool disk: refuse the message, keep the session
            self._storage_failed(exc)

    def _on_chunk_received(self, event: smtp.ChunkReceived) -> smtp.Reply:
        if self._start_message() is None:
            self.txn = None
            return _NO_STORAGE
        return texts.chunk_received(event.size)

    def _on_end(self, event: smtp.EndOfData) -> smtp.Reply | None:
        draft = self._start_message()
        if draft is None:
            self.txn = None
            return _NO_STORAGE
        self._wait(self._commit(draft), after=self._end_transaction)
        return None

    async def _commit(self, draft: Draft) -> smtp.Reply:
        try:
            await self.ctx.intake.commit(draft, session=self.id)
        except TooManyHops as exc:
            log_event(
                log, "message-reject", session=self.id, reply=str(_TOO_MANY_HOPS), hops=exc.hops
            )
            metrics.rejected(_TOO_MANY_HOPS.status)
            return _TOO_MANY_HOPS
        except CheckRefused as exc:
            log_event(log, "message-reject", session=self.id, reply=str(exc.reply))
            metrics.rejected(exc.reply.status, "authentication")  # SPF or DMARC
            return exc.reply
        except StoreUnavailableError as exc:  # the queue database is down: nothing acked
            log_event(log, "spool-error", level=logging.ERROR, session=self.id, error=str(exc))
            return _STORE_DOWN
        except OSError as exc:
            log_event(log, "spool-error", level=logging.ERROR, session=self.id, error=str(exc))
            return _NO_STORAGE
        return texts.message_accepted(draft.envelope.queue_id)

    def _end_transaction(self) -> None:
        self.txn = None

    def _on_rejected(self, event: smtp.MessageRejected) -> smtp.Reply:
        log_event(log, "message-reject", session=self.id, reply=str(event.reply))
        metrics.rejected(event.reply.status)
        self._abort_message()
        self.txn = None
        return event.reply

    def _on_rset(self, event: smtp.Rset) -> smtp.Reply:
        self._abort_message()
        self.txn = None
        return texts.RESET

    def _on_quit(self, event: smtp.Quit) -> smtp.Reply:
        self._abort_message()
        return texts.closing(self.ctx.hostname)

    def _on_etrn(self, event: smtp.Etrn) -> smtp.Reply:
        refusal = self.ctx.policy.check_etrn(self._client(), event.node)
        if refusal is not None:
            return refusal
        return self.ctx.submitter.etrn(event.node)

    # -- AUTH (RFC 4954): the core runs the SASL exchange, policy.auth decides ---------
    #
    # A locked-out IP gets the lock-out reply in place of any answer that would tell a
    # right password from a wrong one: 235, or SCRAM's server signature.

    def _on_auth_challenge(self, event: smtp.AuthChallenge) -> smtp.Reply:
        attempt = self._attempt
        if attempt is not None and not self.ctx.auth.may_confirm(attempt, self.peer_ip):
            # SCRAM's proof checked out, but the server signature would say so.
            self._attempt = None
            return self._locked_out()
        return event.reply

    def _on_auth_credentials(self, event: smtp.AuthCredentials) -> None:
        checked = self.ctx.auth.check_password(
            self.peer_ip, event.authcid, event.authzid, event.password
        )
        self._wait(self._answer_auth(event.mechanism, event.authcid, checked))

    def _on_auth_lookup(self, event: smtp.AuthLookup) -> smtp.Reply:
        assert self.conn is not None
        started = self.ctx.auth.scram_start(self.peer_ip, event.authcid)
        if started is None:
            return self._locked_out()
        self._attempt, keys = started
        return self.conn.scram_challenge(
            keys.salt, keys.iterations, keys.stored_key, keys.server_key
        )

    def _on_auth_outcome(self, event: smtp.AuthOutcome) -> None:
        attempt, self._attempt = self._attempt, None
        assert attempt is not None  # every SCRAM outcome follows its lookup
        verdict = self.ctx.auth.scram_outcome(attempt, event.authcid, event.authzid, event.success)
        self._wait(self._answer_auth(event.mechanism, event.authcid, _done(verdict)))

    async def _answer_auth(
        self, mechanism: str, authcid: str, checking: Awaitable[Verdict]
    ) -> smtp.Reply:
        """Log the verdict (never the secret); answer 235, 535 after its delay, or 421."""
        verdict = await checking
        match verdict:
            case Granted(user):
                self.auth_user = user
                log_event(
                    log, "auth", session=self.id, mechanism=mechanism, user=user, outcome="success"
                )
                return texts.AUTH_OK
            case Refused(delay):
                self._log_failure("failure", mechanism=mechanism, user=authcid)
                if delay is None:
                    return self._locked_out()
                await asyncio.sleep(delay)
                return texts.AUTH_FAILED
            case LockedOut():
                return self._locked_out()

    async def _auth_given_up(self, event: smtp.BadCommand, attempt: Attempt | None) -> smtp.Reply:
        """A SASL exchange cancelled, or broken off past the salt: a failure, with its delay."""
        delay = self.ctx.auth.given_up(self.peer_ip, attempt).delay
        self._log_failure("cancelled")
        if delay is None:
            return self._locked_out()
        await asyncio.sleep(delay)
        return event.reply

    def _log_failure(self, outcome: str, **fields: str) -> None:
        metrics.AUTH_FAILURES.inc()
        log_event(
            log,
            "auth",
            level=logging.WARNING,
            session=self.id,
            client=self.peer_ip,
            **fields,
            outcome=outcome,
        )

    def _locked_out(self) -> smtp.Reply:
        metrics.AUTH_LOCKOUTS.inc()
        self.ctx.refusals.count("auth-lockout")
        log_event(
            log,
            "auth-lockout",
            level=logging.WARNING,
            session=self.id,
            client=self.peer_ip,
            reason="auth-lockout",
        )
        return smtp.reply(
            421, "4.7.0", f"{self.ctx.hostname} Too many failed authentications, try again later"
        )

    def _on_starttls(self, event: smtp.StartTls) -> smtp.Reply:
        # The 220 goes out first; _process starts the handshake once it is written.
        self.txn = None
        self._abort_message()
        self._start_tls = True
        return texts.READY_FOR_TLS

    def _on_bad(self, event: smtp.BadCommand) -> smtp.Reply | None:
        # Any bad line inside a SASL exchange ends it (RFC 4954 §4).
        attempt, self._attempt = self._attempt, None
        if attempt is None and not isinstance(event, smtp.AuthCancelled):
            return event.reply
        self._wait(self._auth_given_up(event, attempt))
        return None

    def _on_closed(self, event: smtp.ConnectionClosed) -> None:
        self._abort_message()
        self._closing = True

    # -- TLS -------------------------------------------------------------------------------

    def _begin_tls(self) -> None:
        """Hand the transport to asyncio's TLS layer; the session waits for the handshake."""
        self._busy = True
        if self.transport is not None:
            # Pause now: start_tls runs in a task, and the ClientHello must reach it rather
            # than our data_received (start_tls resumes reading itself).
            self.transport.pause_reading()
        self.ctx.loop.create_task(self._handshake())

    async def _handshake(self) -> None:
        raw = self.transport
        if raw is None or self.conn is None:
            return
        self._early = []
        context = self.ctx.tls.context
        assert context is not None  # STARTTLS is offered only with a certificate
        try:
            transport = await self.ctx.loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.ctx.limits.tls_handshake_timeout,
            )
        except Exception as exc:  # any handshake failure ends the session the same way
            self._early = None
            metrics.TLS_FAILURES.inc()
            log_event(
                log,
                "tls-failed",
                level=logging.WARNING,
                session=self.id,
                client=self.peer_ip,
                error=str(exc) or type(exc).__name__,
            )
            raw.abort()
            self.connection_lost(None)
            return
        early, self._early = self._early, None
        self._busy = False
        conn = self.conn
        if conn is None or transport is None:
            return
        self._tls_up(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        conn.tls_established()  # discards anything sent before the handshake
        self.auth_user = None  # RFC 3207 §4.2: nothing from before TLS is trusted
        conn.offer(self.ctx.host.extensions_for(self.listener.mode, tls=True))
        for data in early:
            conn.receive_data(data)
        self._process()

    def _tls_up(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.last_active = self.ctx.loop.time()
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            name, _, bits = ssl_object.cipher()
            self.tls_info = f"{ssl_object.version()} with cipher {name} ({bits}/{bits} bits)"
        metrics.TLS_HANDSHAKES.inc()
        log_event(log, "tls", session=self.id, client=self.peer_ip, using=self.tls_info)

    # -- message plumbing ----------------------------------------------------------------

    def _start_message(self) -> Draft | None:
        """The draft of the current transaction, begun at the first need.

        None when the spool could not take it (disk full): the core keeps reading the
        text, and the end of the message is answered with 452 4.3.1.
        """
        txn = self.txn
        assert txn is not None and self.conn is not None
        if txn.storage_failed:
            return None
        if txn.draft is None:
            try:
                txn.draft = self.ctx.intake.begin(
                    self._envelope(txn),
                    self._origin(),
                    given=[r.given for r in txn.recipients],
                    fix_header=self.submission,
                    checks=txn.checks,
                    sign=self.ctx.policy.signs_for(self._client()),
                    outside=not self.ctx.policy.may_relay(self._client()),
                )
                txn.checks = None  # the draft owns it now
            except OSError as exc:
                self._storage_failed(exc)
                return None
        return txn.draft

    def _storage_failed(self, exc: OSError) -> None:
        log_event(log, "spool-error", level=logging.ERROR, session=self.id, error=str(exc))
        self._abort_message()
        assert self.txn is not None
        self.txn.storage_failed = True

    def _rdns_name(self) -> str | None:
        return self._rdns.result()[0] if self._rdns is not None and self._rdns.done() else None

    def _origin(self) -> Origin:
        assert self.conn is not None
        return Origin(
            self._protocol(),
            ip=self.peer_ip,
            helo=self.conn.helo or "",
            rdns=self._rdns_name(),
            tls=self.tls_info,
        )

    def _envelope(self, txn: Transaction) -> Envelope:
        conn = self.conn
        assert conn is not None
        return new_envelope(
            txn.sender,
            txn.params,
            txn.recipients,
            protocol=self._protocol(),
            client_ip=self.peer_ip,
            client_helo=conn.helo or "",
            client_rdns=self._rdns_name(),
            auth=mail_auth(txn.params.auth, self.auth_user),
            auth_user=self.auth_user,
        )

    def _protocol(self) -> str:
        """The with-protocol of RFC 3848 (and RFC 6531 §4.3 for SMTPUTF8)."""
        conn = self.conn
        assert conn is not None
        if conn.lmtp:
            return "LMTP"
        if not conn.esmtp:
            return "SMTP"
        name = "UTF8SMTP" if conn.smtputf8 else "ESMTP"
        return name + ("S" if conn.tls else "") + ("A" if conn.authenticated else "")

    def _abort_message(self) -> None:
        txn = self.txn
        if txn is not None and txn.checks is not None:
            txn.checks.cancel()
            txn.checks = None
        if txn is not None and txn.draft is not None:
            txn.draft.abort()
            txn.draft = None

    # -- server-initiated ---------------------------------------------------------------

    def close_with(self, reply: smtp.Reply) -> None:
        """Send an unsolicited 421 (timeout, shutdown) and close."""
        if self.conn is None or self.transport is None or self._closing:
            return
        self._cancel_greeting()
        self._abort_message()
        self._out.append(self.conn.send(reply))
        self._closing = True
        self._flush()

    @property
    def in_message(self) -> bool:
        """True while message text is arriving: the data timeout applies, not the command one."""
        return self.conn is not None and self.conn.state in (
            smtp.State.DATA,
            smtp.State.BDAT,
            smtp.State.CHUNKING,
        )

    def timed_out(self, now: float) -> str | None:
        """Which deadline has passed (for the sweeper's 421 4.4.2), or None.

        ``idle``: nothing received for command_timeout (data_timeout in message text);
        ``command``: a command line not complete command_timeout after its first octet;
        ``data-rate``: message text slower than min_data_rate on average, after a grace.
        Trickling octets therefore holds a session no longer than the timeouts say.
        """
        if self._busy or self._held:  # greet_delay (at most 5m) bounds the wait
            return None
        limits = self.ctx.limits
        if self.in_message:
            if now - self.last_active > limits.data_timeout:
                return "idle"
            started = self._text_started
            grace = min(DATA_RATE_GRACE, limits.data_timeout)
            if started is not None and now > (
                started + grace + self._text_bytes / limits.min_data_rate
            ):
                return "data-rate"
            return None
        if now - self.last_active > limits.command_timeout:
            return "idle"
        started = self._line_started
        if started is not None and now - started > limits.command_timeout:
            return "command"
        return None

    @property
    def busy(self) -> bool:
        return self._busy


async def _done(verdict: Verdict) -> Verdict:
    """A verdict reached without waiting, as an awaitable (for ``_answer_auth``)."""
    return verdict


def unmapped(ip: str) -> str:
    """``::ffff:192.0.2.7`` (an IPv4 client of a dual-stack socket) as ``192.0.2.7``."""
    return ip[7:] if ip.startswith("::ffff:") else ip
