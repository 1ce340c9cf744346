"""One SMTP session: an ``asyncio.Protocol`` driving ``smtp.ServerConnection``.

The session owns no protocol logic: it turns events into replies by asking the policy
and the spool, and it writes all replies produced by one read in one ``write`` (RFC 2920
pipelining). Work that must wait — the group-committed fsync behind a 250, the reverse
DNS behind an EHLO reply — pauses event processing (and reading) until it is done.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from petrel import smtp
from petrel.log import log_event
from petrel.policy import Client
from petrel.policy.throttle import Attempt
from petrel.policy.users import User, verify_password
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.ids import new_queue_id
from petrel.queue.spool import MessageWriter
from petrel.smtp import replies as texts

from .decoy import decoy_password_hash
from .modes import IMPLICIT_TLS_MODES, SUBMISSION_MODES

if TYPE_CHECKING:
    from .server import Listener, Server

log = logging.getLogger("petrel.smtpd")

# A client that stalls the handshake must not hold a connection slot for long.
TLS_HANDSHAKE_TIMEOUT = 30.0


@functools.lru_cache(maxsize=4)
def _date_at(second: int) -> str:
    return email.utils.formatdate(second, localtime=True)


def _date(timestamp: float | None = None) -> str:
    """The RFC 5322 date-time of ``timestamp`` (default now), made once per second.

    It has one-second precision anyway, and formatdate showed in the receive-path profile.
    """
    return _date_at(int(time.time() if timestamp is None else timestamp))


_INTERNAL_ERROR = smtp.reply(421, "4.3.0", "Internal error, closing connection")
_NO_STORAGE = smtp.reply(452, "4.3.1", "Insufficient system storage, try again later")
_TOO_MANY_HOPS = smtp.reply(554, "5.4.6", "Too many hops (Received header fields); mail loop?")
_HEAD_LIMIT = 256 * 1024


class Transaction:
    """The envelope being built between MAIL and the end of the message."""

    __slots__ = (
        "header",
        "header_done",
        "held",
        "params",
        "recipients",
        "sender",
        "storage_failed",
        "writer",
    )

    def __init__(self, sender: str, params: smtp.MailParams, submission: bool = False) -> None:
        self.sender = sender
        self.params = params
        # (the address as given, its final addresses after aliases, its DSN parameters)
        self.recipients: list[tuple[str, list[str], smtp.RcptParams]] = []
        self.writer: MessageWriter | None = None
        self.storage_failed = False  # the spool could not take the text: answer 452 at the end
        # The header section (up to 256 KiB), kept to count Received fields and, on
        # submission, to see which fields the client left out.
        self.header = bytearray()
        self.header_done = False
        # Submission (RFC 6409 §8): the text is held back until the header is complete,
        # so Date: and Message-ID: can be added in front when missing.
        self.held: bytearray | None = bytearray() if submission else None

    def add_text(self, data: bytes) -> None:
        """Keep the header section (up to 256 KiB)."""
        if self.header_done:
            return
        head = self.header
        start = max(len(head) - 3, 0)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if head.startswith(b"\r\n"):
            head.clear()
            self.header_done = True
        elif end >= 0:
            del head[end + 2 :]
            self.header_done = True
        elif len(head) > _HEAD_LIMIT:
            self.header_done = True

    @property
    def received_fields(self) -> int:
        head = bytes(self.header).lower()
        return head.count(b"\nreceived:") + head.startswith(b"received:")


class SmtpSession(asyncio.Protocol):
    __slots__ = (
        "_attempt",
        "_busy",
        "_closing",
        "_early",
        "_out",
        "_rdns",
        "_start_tls",
        "auth_user",
        "conn",
        "id",
        "last_active",
        "listener",
        "peer_ip",
        "peer_port",
        "server",
        "tls_info",
        "transport",
        "txn",
    )

    def __init__(self, server: Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.conn: smtp.ServerConnection | None = None
        self.txn: Transaction | None = None
        self.peer_ip = ""
        self.peer_port = 0
        self.id = ""
        self._out: list[bytes] = []
        self._busy = False
        self._closing = False
        self._rdns: asyncio.Future[tuple[str | None, bool]] | None = None
        self._start_tls = False
        self._early: list[bytes] | None = None  # set while a STARTTLS handshake runs
        self.tls_info: str | None = None  # "TLSv1.3 with cipher …" once TLS is up
        self.auth_user: str | None = None  # the user address once AUTH succeeded
        self._attempt: Attempt | None = None  # a SCRAM exchange past the salt, not yet done
        self.last_active = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        ip = peer[0]
        self.peer_ip = ip[7:] if ip.startswith("::ffff:") else ip
        self.peer_port = peer[1]
        server = self.server
        self.id = server.new_session_id()
        self.last_active = server.loop.time()
        refusal = server.admit(self)
        if refusal is not None:
            log_event(log, "reject", session=self.id, client=self.peer_ip, reason=refusal)
            transport.write(smtp.reply(421, "4.7.0", f"{server.hostname} {refusal}").to_bytes())
            transport.close()
            return
        self.conn = smtp.ServerConnection(
            server.hostname,
            extensions=server.extensions_for(self.listener.mode, tls=False),
            max_recipients=server.config.limits.recipients,
            max_errors=server.config.limits.errors,
            strict_paths=server.config.policy.strict_paths,
            lmtp=self.listener.mode == "lmtp",
        )
        self._rdns = server.rdns.lookup(self.peer_ip)
        log_event(log, "connect", session=self.id, client=f"{self.peer_ip}:{self.peer_port}")
        if self.listener.mode in IMPLICIT_TLS_MODES:
            # RFC 8314: the listener did the handshake before connection_made.
            self._tls_up(transport)
            self.conn.implicit_tls()
            self.conn.extensions = server.extensions_for(self.listener.mode, tls=True)
        transport.write(self.conn.send(self._greeting()))

    def _greeting(self) -> smtp.Reply:
        date = _date()
        return texts.greeting(self.server.hostname, date)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            return
        if self._early is not None:
            # Decrypted bytes that overtook the end of start_tls: legitimate, keep them.
            self._early.append(data)
            return
        self.last_active = self.server.loop.time()
        self.conn.receive_data(data)
        if not self._busy:
            self._process()

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.conn.receive_data(b"")
            if not self._busy:
                self._process()
        # We close ourselves once pending replies are written (TLS transports ignore this).
        return self.tls_info is None

    def connection_lost(self, exc: Exception | None) -> None:
        # Also called by a failed TLS handshake, where asyncio would not: idempotent.
        self._abort_message()
        if self._attempt is not None:  # a SCRAM exchange walked away from: it failed
            self.server.auth_throttle.failure(self._attempt)
            self._attempt = None
        if self.conn is not None:
            self.server.release(self)
            log_event(log, "disconnect", session=self.id, client=self.peer_ip)
        self.conn = None

    def pause_writing(self) -> None:
        # A client that pipelines without reading our replies must not make us buffer
        # unboundedly: stop reading until it catches up.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._busy:
            self.transport.resume_reading()

    # -- event loop ---------------------------------------------------------------------

    def _process(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            while not self._busy:
                event = conn.next_event()
                if event is smtp.NEED_DATA or event is smtp.PAUSED:
                    break
                handler = _HANDLERS[type(event)]
                result = handler(self, event)
                if result is not None:
                    self._out.append(conn.send(result))
                if conn.state is smtp.State.CLOSED:
                    self._closing = True
                    break
        except Exception:
            log.exception("session %s: internal error", self.id)
            self._abort_message()
            self._out.append(conn.send(_INTERNAL_ERROR))
            self._closing = True
        self._flush()
        if self._start_tls and not self._closing:
            self._start_tls = False
            self._begin_tls()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
        if self._closing:
            transport.close()

    def _wait(self, work: Awaitable[smtp.Reply], after: Callable[[], None] | None = None) -> None:
        """Pause the session until ``work`` yields the reply to the pending event."""
        self._busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.server.loop.create_task(self._finish(work, after))

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
        elif self.transport is not None:
            self.transport.resume_reading()
        self._process()

    # -- handlers: each returns the reply, or None when there is none (yet) -------------

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
            f"{self.server.hostname} Hello {event.domain} [{self.peer_ip}]{forged},"
            " pleased to meet you"
        )
        if isinstance(event, smtp.Ehlo):
            return self.conn.ehlo_reply(first)
        return smtp.Reply(250, (first,))

    @property
    def submission(self) -> bool:
        return self.listener.mode in SUBMISSION_MODES

    def _on_mail(self, event: smtp.Mail) -> smtp.Reply:
        sender = "" if event.sender is None else str(event.sender)
        if self.submission and self.auth_user is None:
            return texts.AUTH_REQUIRED  # RFC 6409 §4.3 (530 5.7.0)
        if (
            self.auth_user is not None
            and sender
            and self.server.config.auth.sender_login_match
            and not self.server.policy.may_send_as(self.auth_user, sender)
        ):
            log_event(log, "sender-reject", session=self.id, user=self.auth_user, sender=sender)
            return smtp.reply(
                553, "5.7.1", f"<{sender}>: Sender address not owned by user {self.auth_user}"
            )
        self.txn = Transaction(sender, event.params, submission=self.submission)
        return texts.sender_ok(sender)

    def _on_rcpt(self, event: smtp.Rcpt) -> smtp.Reply:
        assert self.txn is not None
        policy = self.server.policy
        resolved = policy.resolve_recipient(event.recipient, self._client())
        if isinstance(resolved, smtp.Reply):
            log_event(
                log, "rcpt-reject", session=self.id, rcpt=str(event.recipient), reply=str(resolved)
            )
            return resolved
        original = policy.canonical(event.recipient)
        self.txn.recipients.append((original, resolved, event.params))
        return texts.recipient_ok(str(event.recipient))

    def _on_data(self, event: smtp.Data) -> smtp.Reply:
        return texts.START_DATA if self._start_message() is not None else _NO_STORAGE

    def _on_chunk(self, event: smtp.DataChunk) -> None:
        writer = self._start_message()
        if writer is None:
            return
        txn = self.txn
        assert txn is not None
        txn.add_text(event.data)
        try:
            if txn.held is None:
                writer.write(event.data)
                return
            txn.held += event.data
            if txn.header_done:
                self._flush_held(txn, writer)
        except OSError as exc:  # a full spool disk: refuse the message, keep the session
            self._storage_failed(exc)

    def _flush_held(self, txn: Transaction, writer: MessageWriter) -> None:
        """Write the held-back text with the fields RFC 6409 §8.2–8.3 lets us add."""
        held = txn.held
        if held is None:
            return
        txn.held = None
        names = {
            line.split(b":", 1)[0].strip().lower()
            for line in bytes(txn.header).split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t") and b":" in line
        }
        added = b""
        if b"date" not in names:
            added += f"Date: {_date()}\r\n".encode()
        if b"message-id" not in names:
            msgid = f"{writer.envelope.queue_id}.{secrets.token_hex(4)}@{self.server.hostname}"
            added += f"Message-ID: <{msgid}>\r\n".encode()
        writer.write(added + bytes(held))

    def _on_chunk_received(self, event: smtp.ChunkReceived) -> smtp.Reply:
        if self._start_message() is None:
            self.txn = None
            return _NO_STORAGE
        return texts.chunk_received(event.size)

    def _on_end(self, event: smtp.EndOfData) -> smtp.Reply | None:
        writer = self._start_message()
        if writer is None:
            self.txn = None
            return _NO_STORAGE
        assert self.txn is not None
        hops = self.txn.received_fields + 1  # with ours, as delivery will count them
        if hops > self.server.config.delivery.max_received:
            log_event(log, "message-reject", session=self.id, reply=str(_TOO_MANY_HOPS), hops=hops)
            self._abort_message()
            self.txn = None
            return _TOO_MANY_HOPS
        if self.txn.held is not None:
            try:
                self._flush_held(self.txn, writer)
            except OSError as exc:
                self._storage_failed(exc)
                self.txn = None
                return _NO_STORAGE
        self._wait(self._commit(writer), after=self._end_transaction)
        return None

    async def _commit(self, writer: MessageWriter) -> smtp.Reply:
        try:
            await self.server.spool.commit(writer)
        except OSError as exc:
            log_event(log, "spool-error", level=logging.ERROR, session=self.id, error=str(exc))
            return _NO_STORAGE
        envelope = writer.envelope
        log_event(
            log,
            "accepted",
            session=self.id,
            queue_id=envelope.queue_id,
            sender=envelope.sender or "<>",
            nrcpt=len(envelope.recipients),
            size=writer.size,
        )
        self.server.manager.submit(envelope)
        return texts.message_accepted(envelope.queue_id)

    def _end_transaction(self) -> None:
        self.txn = None

    def _on_rejected(self, event: smtp.MessageRejected) -> smtp.Reply:
        log_event(log, "message-reject", session=self.id, reply=str(event.reply))
        self._abort_message()
        self.txn = None
        return event.reply

    def _on_rset(self, event: smtp.Rset) -> smtp.Reply:
        self._abort_message()
        self.txn = None
        return texts.RESET

    def _on_noop(self, event: smtp.Noop) -> smtp.Reply:
        return texts.OK

    def _on_quit(self, event: smtp.Quit) -> smtp.Reply:
        self._abort_message()
        return texts.closing(self.server.hostname)

    def _on_vrfy(self, event: smtp.Vrfy) -> smtp.Reply:
        return self.server.policy.vrfy(event.argument, self._client())

    def _on_expn(self, event: smtp.Expn) -> smtp.Reply:
        return self.server.policy.expn(event.argument, self._client())

    def _on_help(self, event: smtp.Help) -> smtp.Reply:
        return smtp.help_reply(event.topic)

    def _on_verb(self, event: smtp.Verb) -> smtp.Reply:
        return texts.VERBOSE

    def _on_etrn(self, event: smtp.Etrn) -> smtp.Reply:
        if not self.server.policy.may_relay(self._client()):
            return smtp.reply(459, "4.7.1", f"<{event.node}>: ETRN not allowed from this client")
        return self.server.manager.etrn(event.node)

    # -- AUTH (RFC 4954): the core runs the SASL exchange, we check the secrets --------
    #
    # The throttle is asked before every verification (``begin``), and a locked-out IP
    # gets the lock-out reply in place of any answer that would tell a right password
    # from a wrong one: 235, or SCRAM's server signature.

    def _on_auth_challenge(self, event: smtp.AuthChallenge) -> smtp.Reply:
        if self._attempt is not None and self.server.auth_throttle.locked(self.peer_ip):
            # SCRAM's proof checked out, but the server signature would say so.
            self.server.auth_throttle.failure(self._attempt)
            self._attempt = None
            return self._locked_out()
        return event.reply

    def _on_auth_credentials(self, event: smtp.AuthCredentials) -> smtp.Reply | None:
        attempt = self.server.auth_throttle.begin(self.peer_ip)
        if attempt is None:
            return self._locked_out()
        self._wait(self._check_password(event, attempt))
        return None

    async def _check_password(self, event: smtp.AuthCredentials, attempt: Attempt) -> smtp.Reply:
        user = self.server.policy.login_user(event.authcid)
        stored = user.password_hash if user is not None else decoy_password_hash()
        # argon2 is slow on purpose: off the event loop, and as slow for unknown users.
        # Should this raise, the attempt stays counted as a failure: nothing to undo.
        ok = await asyncio.to_thread(verify_password, stored, event.password)
        return await self._auth_result(
            event.mechanism, event.authcid, event.authzid, user, ok, attempt
        )

    def _on_auth_lookup(self, event: smtp.AuthLookup) -> smtp.Reply:
        assert self.conn is not None
        # The salt is the first thing a guesser (or a prober of names) gets: budget it.
        attempt = self.server.auth_throttle.begin(self.peer_ip)
        if attempt is None:
            return self._locked_out()
        self._attempt = attempt
        policy = self.server.policy
        user = policy.login_user(event.authcid)
        keys = user.scram if user is not None else None
        if keys is None:
            # Decoys as stable as real keys, so nobody learns who exists.
            keys = self.server.scram_decoys.keys(policy.login_address(event.authcid))
        return self.conn.scram_challenge(
            keys.salt, keys.iterations, keys.stored_key, keys.server_key
        )

    def _on_auth_outcome(self, event: smtp.AuthOutcome) -> None:
        attempt, self._attempt = self._attempt, None
        assert attempt is not None  # every SCRAM outcome follows its lookup
        user = self.server.policy.login_user(event.authcid)
        self._wait(
            self._auth_result(
                event.mechanism, event.authcid, event.authzid, user, event.success, attempt
            )
        )

    async def _auth_result(
        self,
        mechanism: str,
        authcid: str,
        authzid: str,
        user: User | None,
        ok: bool,
        attempt: Attempt,
    ) -> smtp.Reply:
        """Log (never the secret), count failures, answer 235, 535 or the lock-out 421."""
        if (
            ok
            and user is not None
            and authzid
            and authzid.lower()
            not in (
                authcid.lower(),
                user.address,
            )
        ):
            ok = False  # acting for someone else (RFC 4616 authzid) is not allowed
        throttle = self.server.auth_throttle
        if ok and user is not None:
            if not throttle.success(attempt):  # locked out while we verified
                return self._locked_out()
            self.auth_user = user.address
            log_event(
                log,
                "auth",
                session=self.id,
                mechanism=mechanism,
                user=user.address,
                outcome="success",
            )
            return texts.AUTH_OK
        delay = throttle.failure(attempt)
        self._log_failure("failure", mechanism=mechanism, user=authcid)
        if delay is None:
            return self._locked_out()
        await asyncio.sleep(delay)
        return texts.AUTH_FAILED

    async def _auth_given_up(self, event: smtp.BadCommand, attempt: Attempt | None) -> smtp.Reply:
        """A SASL exchange cancelled, or broken off past the salt: a failure, with its delay."""
        throttle = self.server.auth_throttle
        delay = throttle.failure(attempt) if attempt else throttle.cancelled(self.peer_ip)
        self._log_failure("cancelled")
        if delay is None:
            return self._locked_out()
        await asyncio.sleep(delay)
        return event.reply

    def _log_failure(self, outcome: str, **fields: str) -> None:
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
        log_event(log, "auth-lockout", level=logging.WARNING, session=self.id, client=self.peer_ip)
        return smtp.reply(
            421, "4.7.0", f"{self.server.hostname} Too many failed authentications, try again later"
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
        self.server.loop.create_task(self._handshake())

    async def _handshake(self) -> None:
        raw = self.transport
        if raw is None or self.conn is None:
            return
        self._early = []
        try:
            transport = await self.server.loop.start_tls(
                raw,
                self,
                self.server.tls.context,
                server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except Exception as exc:  # any handshake failure ends the session the same way
            self._early = None
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
        conn.tls_established()  # discards anything sent before the handshake
        self.auth_user = None  # RFC 3207 §4.2: nothing from before TLS is trusted
        conn.extensions = self.server.extensions_for(self.listener.mode, tls=True)
        for data in early:
            conn.receive_data(data)
        self._process()

    def _tls_up(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_active = self.server.loop.time()
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            name, _, bits = ssl_object.cipher()
            self.tls_info = f"{ssl_object.version()} with cipher {name} ({bits}/{bits} bits)"
        log_event(log, "tls", session=self.id, client=self.peer_ip, using=self.tls_info)

    # -- message plumbing ----------------------------------------------------------------

    def _start_message(self) -> MessageWriter | None:
        """The spool file for the current transaction, created on first need.

        None when the spool could not take it (disk full): the core keeps reading the
        text, and the end of the message is answered with 452 4.3.1.
        """
        txn = self.txn
        assert txn is not None and self.conn is not None
        if txn.storage_failed:
            return None
        if txn.writer is None:
            envelope = self._envelope(txn)
            try:
                txn.writer = self.server.spool.begin(envelope)
                txn.writer.write(self._received_header(envelope, txn))
            except OSError as exc:
                self._storage_failed(exc)
                return None
        return txn.writer

    def _storage_failed(self, exc: OSError) -> None:
        log_event(log, "spool-error", level=logging.ERROR, session=self.id, error=str(exc))
        self._abort_message()
        assert self.txn is not None
        self.txn.storage_failed = True

    def _envelope(self, txn: Transaction) -> Envelope:
        conn = self.conn
        assert conn is not None
        recipients: list[Recipient] = []
        seen: set[str] = set()
        for original, finals, params in txn.recipients:
            for final in finals:
                key = final.lower()
                if key in seen:
                    continue
                seen.add(key)
                orcpt = params.orcpt
                if orcpt is None and final.lower() != original.lower():
                    orcpt = f"rfc822;{original}"
                recipients.append(Recipient(final, orcpt=orcpt, notify=params.notify))
        rdns = self._rdns.result()[0] if self._rdns is not None and self._rdns.done() else None
        p = txn.params
        return Envelope(
            queue_id=new_queue_id(),
            sender=txn.sender,
            recipients=recipients,
            received_at=time.time(),
            body=p.body or "7BIT",
            smtputf8=p.smtputf8,
            size=p.size,
            ret=p.ret,
            envid=p.envid,
            by=p.by,
            client_ip=self.peer_ip,
            client_helo=conn.helo or "",
            client_rdns=rdns,
            protocol=self._protocol(),
            auth=self._mail_auth(p.auth),
            auth_user=self.auth_user,
        )

    def _mail_auth(self, given: str | None) -> str | None:
        """RFC 4954 §5: trust ``MAIL AUTH=`` only from an authenticated client.

        An unauthenticated client's AUTH= becomes ``<>``; an authenticated one without
        AUTH= is taken to submit as itself.
        """
        if self.auth_user is None:
            return None if given is None else "<>"
        return given if given is not None else self.auth_user

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

    def _received_header(self, envelope: Envelope, txn: Transaction) -> bytes:
        """The trace field of RFC 5321 §4.4, folded.

        The ``for`` clause names the recipient as the client gave it, and only when
        there is one: listing several would disclose Bcc recipients to each other.
        """
        rdns = envelope.client_rdns or "unknown"
        lines = [
            f"Received: from {envelope.client_helo or 'unknown'} ({rdns} [{self.peer_ip}])",
        ]
        if self.tls_info is not None:
            lines.append(f"\t(using {self.tls_info})")
        lines.append(
            f"\tby {self.server.hostname} (Petrel) with {envelope.protocol} id {envelope.queue_id}"
        )
        if len(txn.recipients) == 1:
            lines.append(f"\tfor <{txn.recipients[0][0]}>")
        lines[-1] += f"; {_date(envelope.received_at)}"
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _abort_message(self) -> None:
        txn = self.txn
        if txn is not None and txn.writer is not None:
            txn.writer.abort()
            txn.writer = None

    # -- server-initiated ---------------------------------------------------------------

    def close_with(self, reply: smtp.Reply) -> None:
        """Send an unsolicited 421 (timeout, shutdown) and close."""
        if self.conn is None or self.transport is None or self._closing:
            return
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

    @property
    def idle_limit(self) -> float:
        limits = self.server.config.limits
        return limits.data_timeout if self.in_message else limits.command_timeout

    @property
    def busy(self) -> bool:
        return self._busy


_HANDLERS: dict[type[smtp.Event], Callable[[SmtpSession, smtp.Event], smtp.Reply | None]] = {
    smtp.Helo: SmtpSession._on_helo,
    smtp.Ehlo: SmtpSession._on_helo,
    smtp.Mail: SmtpSession._on_mail,
    smtp.Rcpt: SmtpSession._on_rcpt,
    smtp.Data: SmtpSession._on_data,
    smtp.DataChunk: SmtpSession._on_chunk,
    smtp.ChunkReceived: SmtpSession._on_chunk_received,
    smtp.EndOfData: SmtpSession._on_end,
    smtp.MessageRejected: SmtpSession._on_rejected,
    smtp.Rset: SmtpSession._on_rset,
    smtp.Noop: SmtpSession._on_noop,
    smtp.Quit: SmtpSession._on_quit,
    smtp.Vrfy: SmtpSession._on_vrfy,
    smtp.Expn: SmtpSession._on_expn,
    smtp.Help: SmtpSession._on_help,
    smtp.Verb: SmtpSession._on_verb,
    smtp.Etrn: SmtpSession._on_etrn,
    smtp.AuthChallenge: SmtpSession._on_auth_challenge,
    smtp.AuthCredentials: SmtpSession._on_auth_credentials,
    smtp.AuthLookup: SmtpSession._on_auth_lookup,
    smtp.AuthOutcome: SmtpSession._on_auth_outcome,
    smtp.StartTls: SmtpSession._on_starttls,
    smtp.BadCommand: SmtpSession._on_bad,
    smtp.AuthCancelled: SmtpSession._on_bad,
    smtp.ConnectionClosed: SmtpSession._on_closed,
}  # type: ignore[dict-item]
