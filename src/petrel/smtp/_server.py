"""``ServerConnection``: the server side of SMTP as a sans-IO state machine.

The application feeds bytes in with ``receive_data``, pulls ``next_event`` until it gets
``NEED_DATA`` (or ``PAUSED``), answers each command event with ``send(reply)`` and writes
the returned bytes. No sockets, clocks or files: everything observable is in the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeAlias

from . import _abnf, _sasl
from . import _replies as r
from ._address import AddressError, parse_path, split_path
from ._data import ChunkReader, DataReader
from ._errors import LocalProtocolError
from ._events import (
    AuthCancelled,
    AuthChallenge,
    AuthCredentials,
    AuthLookup,
    AuthOutcome,
    BadCommand,
    ChunkReceived,
    ConnectionClosed,
    Data,
    DataChunk,
    Ehlo,
    EndOfData,
    Etrn,
    Event,
    Expn,
    Helo,
    Help,
    Mail,
    MessageRejected,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Verb,
    Vrfy,
)
from ._extensions import Extensions
from ._params import ParameterError, parse_mail_params, parse_rcpt_params
from ._state import ALLOWED, OUT_OF_ORDER, TRANSACTION_ENDS, TRANSITIONS, State
from ._util import NEED_DATA, PAUSED

# What ``next_event`` hands out: an event, or one of the two sentinels.
NextEvent: TypeAlias = Event | type[NEED_DATA] | type[PAUSED]

# RFC 5321 §4.5.3.1.4: 512 octets per command line including CRLF. MAIL and RCPT get
# room for their extension parameters (RFC 5321 §4.1.2, RFC 3461 ORCPT up to 500 chars);
# AUTH lines may be 12288 octets (RFC 4954 §4).
MAX_COMMAND_LINE = 512
MAX_PARAMETER_LINE = 2048
MAX_AUTH_LINE = 12288

_LINE_LIMITS = {"MAIL": MAX_PARAMETER_LINE, "RCPT": MAX_PARAMETER_LINE, "AUTH": MAX_AUTH_LINE}
_MAIL_STRICT = re.compile(r"FROM:", re.IGNORECASE)
_MAIL_LENIENT = re.compile(r" *FROM *: *", re.IGNORECASE)
_RCPT_STRICT = re.compile(r"TO:", re.IGNORECASE)
_RCPT_LENIENT = re.compile(r" *TO *: *", re.IGNORECASE)

# Which reply-transition key an event's reply is judged by.
_KEYS: dict[type[Event], str] = {
    Helo: "HELO",
    Ehlo: "EHLO",
    Mail: "MAIL",
    Rcpt: "RCPT",
    Data: "DATA",
    EndOfData: "END",
    MessageRejected: "END",
    ChunkReceived: "CHUNK",
    Rset: "RSET",
    Quit: "QUIT",
    AuthChallenge: "AUTH",
    AuthCredentials: "AUTH",
    AuthLookup: "AUTH",
    AuthOutcome: "AUTH",
    StartTls: "STARTTLS",
}

# Commands that move no mail (Postfix's smtpd_junk_command_limit: NOOP, VRFY, ETRN,
# RSET; here also EXPN, HELP and VERB). Past ``max_junk`` of them since the last
# accepted message each one counts as an error, so a client that floods them is closed
# by the error limit however cheap each one is.
_JUNK = (Noop, Rset, Vrfy, Expn, Help, Verb, Etrn)


class ServerConnection:
    """One SMTP session, server side."""

    __slots__ = (
        "_authenticated",
        "_buf",
        "_chunk",
        "_chunk_error",
        "_chunk_last",
        "_chunk_return",
        "_data",
        "_discarding",
        "_eof",
        "_errors",
        "_extensions",
        "_junk",
        "_line_crlf",
        "_message_size",
        "_pending",
        "_pending_key",
        "_sasl",
        "_state",
        "body",
        "esmtp",
        "helo",
        "hostname",
        "lmtp",
        "max_errors",
        "max_junk",
        "max_recipients",
        "normalize_bare_lf",
        "rcpt_attempted",
        "recipients",
        "smtputf8",
        "strict_paths",
        "tls",
    )

    def __init__(
        self,
        hostname: str,
        *,
        extensions: Extensions | None = None,
        max_recipients: int = 100,
        max_errors: int = 10,
        max_junk: int = 100,
        strict_paths: bool = False,
        normalize_bare_lf: bool = False,
        lmtp: bool = False,
    ) -> None:
        self.hostname = hostname
        # Postfix 3.9's smtpd_forbid_bare_newline = normalize: an LF-only line is read as
        # a CRLF line, only CRLF.CRLF ends DATA; False refuses bare LFs (500 / 550 5.6.0).
        self.normalize_bare_lf = normalize_bare_lf
        self._line_crlf = True  # did the last command line end with CRLF?
        # RFC 2033: LHLO instead of HELO/EHLO, and after the message text one reply per
        # accepted recipient (``send`` repeats one verdict; ``send_per_recipient``).
        self.lmtp = lmtp
        self._extensions = extensions if extensions is not None else Extensions()
        self.max_recipients = max_recipients
        self.max_errors = max_errors
        self.max_junk = max_junk
        self.strict_paths = strict_paths
        self._state = State.GREETING
        self.helo: str | None = None
        self.esmtp = False
        self.tls = False
        self._authenticated = False
        self._errors = 0
        self._junk = 0  # junk commands since the last accepted message
        self._buf = bytearray()
        self._eof = False
        self._discarding = False
        self._pending: Event | None = None
        self._pending_key = ""
        self._data: DataReader | None = None
        self._chunk: ChunkReader | None = None
        self._chunk_last = False
        self._chunk_error: r.Reply | None = None
        self._chunk_return = State.READY
        self._sasl: _sasl.Mechanism | None = None
        self._reset_transaction()

    # -- read-only state: the core changes it, the application reads it ----------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def errors(self) -> int:
        """Replies of code >= 500 so far (and junk commands past ``max_junk``)."""
        return self._errors

    @property
    def authenticated(self) -> bool:
        """True once an AUTH exchange was answered 235 (until TLS starts over)."""
        return self._authenticated

    @property
    def extensions(self) -> Extensions:
        """What EHLO offers and the parameters accepted; changed only by ``offer``."""
        return self._extensions

    def offer(self, extensions: Extensions) -> None:
        """Offer ``extensions`` from now on: after TLS, AUTH and no STARTTLS (RFC 3207 §4.2).

        Takes effect with the next command: the EHLO reply and parameter checks use it.
        """
        self._extensions = extensions

    # -- transaction bookkeeping ---------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.recipients = 0  # recipients accepted in this transaction
        self.rcpt_attempted = False
        self.smtputf8 = False
        self.body: str | None = None
        self._message_size = 0

    @property
    def in_transaction(self) -> bool:
        return self._state in (State.MAIL, State.RCPT, State.DATA, State.BDAT, State.CHUNKING)

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
        elif self._state is State.TLS:
            # STARTTLS injection defence (CVE-2011-0411): nothing sent before the
            # handshake completes may be read as a command afterwards.
            return
        elif self._state is State.CLOSED:
            return  # nothing more will be read: don't let a peer grow the buffer
        else:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet consumed: a partial line, or input not yet read."""
        return len(self._buf)

    def ehlo_reply(self, first_line: str) -> r.Reply:
        """The multi-line EHLO reply: ``first_line`` then the advertised keywords."""
        return r.Reply(250, (first_line, *self._extensions.keywords()))

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS finished: back to the start (RFC 3207 §4.2)."""
        if self._state is not State.TLS:
            raise LocalProtocolError("tls_established() outside a STARTTLS handshake")
        self._buf.clear()
        self.tls = True
        self.helo = None
        self.esmtp = False
        # RFC 3207 §4.2: forget everything the client said before TLS, AUTH included.
        self._authenticated = False
        self._state = State.INIT

    def implicit_tls(self) -> None:
        """The session runs inside TLS from its first byte (RFC 8314 submissions)."""
        self.tls = True

    # -- events --------------------------------------------------------------------------

    def next_event(self) -> NextEvent:
        """The next thing the client said, ``NEED_DATA``, or ``PAUSED`` (reply first)."""
        if self._pending is not None or self._state in (State.GREETING, State.TLS, State.CLOSED):
            return PAUSED
        if self._state is State.DATA:
            return self._deliver(self._next_data_event())
        if self._state is State.BDAT:
            return self._deliver(self._next_chunk_event())
        line = self._next_line()
        if line is None:
            if self._eof:
                self._state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        if isinstance(line, r.Reply):
            return self._deliver(BadCommand(line))
        if self._state is State.AUTH:
            return self._deliver(self._sasl_response(line))
        return self._deliver(self._parse_command(line))

    def _deliver(self, event: Event | type[NEED_DATA]) -> Event | type[NEED_DATA]:
        """Hand out an event; one that needs a reply blocks the next until it has one."""
        if isinstance(event, Event) and event.needs_reply:
            self._pending = event
            self._pending_key = _KEYS.get(type(event), "")
        return event

    def _next_line(self) -> str | r.Reply | None:
        buf = self._buf
        end = buf.find(b"\n")
        if self._discarding:
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._discarding = False
            return r.LINE_TOO_LONG
        if end < 0:
            if len(buf) > MAX_AUTH_LINE:
                buf.clear()
                self._discarding = True
            return None
        raw = bytes(buf[: end + 1])
        del buf[: end + 1]
        if end > 0 and raw[-2] == 0x0D:
            self._line_crlf = True
        elif self.normalize_bare_lf:
            self._line_crlf = False
            raw = raw[:-1] + b"\r\n"  # an LF-only line, read as a CRLF line
        else:
            return r.BARE_NEWLINE
        if b"\r" in raw[:-2]:
            return r.BARE_NEWLINE  # a bare CR is refused in every mode
        if b"\0" in raw:
            return r.NUL_IN_COMMAND
        if len(raw) > MAX_COMMAND_LINE:
            limit = (
                MAX_AUTH_LINE
                if self._state is State.AUTH
                else _LINE_LIMITS.get(raw[:4].upper().decode("ascii", "replace"), 0)
            )
            if len(raw) > max(limit, MAX_COMMAND_LINE):
                return r.LINE_TOO_LONG
        try:
            return raw[:-2].decode("utf-8")
        except UnicodeDecodeError:
            return r.BAD_UTF8

    def _next_data_event(self) -> Event | type[NEED_DATA]:
        assert self._data is not None
        reader = self._data
        while True:
            before = len(self._buf)
            chunk, finished = reader.feed(self._buf)
            if finished:
                self._data = None
                if reader.error is not None:
                    return MessageRejected(reader.error)
                return EndOfData(reader.size)
            if chunk:
                return DataChunk(chunk)
            if len(self._buf) < before:
                continue  # spoiled text was consumed; the terminator may be next
            if self._eof:
                self._state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA

    def _next_chunk_event(self) -> Event | type[NEED_DATA]:
        assert self._chunk is not None
        reader = self._chunk
        if reader.remaining and self._buf:
            chunk = reader.feed(self._buf)
            if self._chunk_error is None:
                self._message_size += len(chunk)
                if self._message_size > self._limit():
                    self._chunk_error = r.MESSAGE_TOO_BIG
                else:
                    return DataChunk(chunk)
        if reader.remaining:
            if self._eof:
                self._state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        self._chunk = None
        error, self._chunk_error = self._chunk_error, None
        if error is r.MESSAGE_TOO_BIG:
            self._state = State.CHUNKING
            return MessageRejected(error)
        if error is not None:
            self._state = self._chunk_return
            return BadCommand(error)
        self._state = State.CHUNKING
        if self._chunk_last:
            return EndOfData(self._message_size)
        return ChunkReceived(self._message_size)

    def _limit(self) -> int:
        size = self._extensions.size
        return size if size else 1 << 62

    # -- command parsing -------------------------------------------------------------------

    def _parse_command(self, line: str) -> Event | type[NEED_DATA]:
        verb, _, arg = line.partition(" ")
        # Verbs are ASCII: "maıl".upper() == "MAIL" must not make a command.
        verb = verb.upper() if verb.isascii() else ""
        if self.lmtp:
            # LHLO is EHLO under another name; HELO and EHLO do not exist in LMTP.
            verb = {"LHLO": "EHLO", "HELO": "", "EHLO": ""}.get(verb, verb)
        elif verb == "LHLO":
            verb = ""
        handler = _HANDLERS.get(verb)
        if handler is None:
            return BadCommand(r.UNRECOGNIZED)
        if verb not in ALLOWED[self._state]:
            error = self._sequence_error(verb)
            if verb == "BDAT":
                return self._discard_chunk(arg, error)
            return BadCommand(error)
        try:
            return handler(self, arg)
        except ParameterError as exc:
            return BadCommand(exc.reply)

    def _sequence_error(self, verb: str) -> r.Reply:
        if self._state is State.MAIL and verb in ("DATA", "BDAT"):
            return r.NO_VALID_RECIPIENTS if self.rcpt_attempted else r.NEED_RCPT
        default = r.reply(503, "5.5.1", "Bad sequence of commands")
        return OUT_OF_ORDER[self._state].get(verb, default)

    def _cmd_helo(self, arg: str) -> Event:
        domain = arg.strip()
        return Helo(domain) if domain else BadCommand(r.HELO_NEEDS_DOMAIN)

    def _cmd_ehlo(self, arg: str) -> Event:
        domain = arg.strip()
        return Ehlo(domain) if domain else BadCommand(r.EHLO_NEEDS_DOMAIN)

    def _cmd_mail(self, arg: str) -> Event:
        prefix = (_MAIL_STRICT if self.strict_paths else _MAIL_LENIENT).match(arg)
        if prefix is None:
            return BadCommand(r.syntax("5.5.4", "Syntax: MAIL FROM:<address>"))
        try:
            path, params = split_path(arg[prefix.end() :], lenient=not self.strict_paths)
            sender = parse_path(path)
        except AddressError as exc:
            return BadCommand(r.syntax("5.1.7", f"Bad sender address syntax: {r.echo(str(exc))}"))
        if sender is not None and sender.is_bare_postmaster:
            # <Postmaster> without a domain is a forward-path only (RFC 5321 §4.1.1.3).
            return BadCommand(r.syntax("5.1.7", "Bad sender address syntax: no domain"))
        mail_params = parse_mail_params(params, self._extensions, esmtp=self.esmtp)
        if sender is not None and not sender.is_ascii and not mail_params.smtputf8:
            return BadCommand(r.NON_ASCII_NEEDS_SMTPUTF8)
        return Mail(sender, mail_params)

    def _cmd_rcpt(self, arg: str) -> Event:
        self.rcpt_attempted = True
        prefix = (_RCPT_STRICT if self.strict_paths else _RCPT_LENIENT).match(arg)
        if prefix is None:
            return BadCommand(r.syntax("5.5.4", "Syntax: RCPT TO:<address>"))
        try:
            path, params = split_path(arg[prefix.end() :], lenient=not self.strict_paths)
            recipient = parse_path(path)
        except AddressError as exc:
            error = r.echo(str(exc))
            return BadCommand(r.syntax("5.1.3", f"Bad recipient address syntax: {error}"))
        if recipient is None:
            return BadCommand(r.syntax("5.1.3", "The null path is not a recipient"))
        rcpt_params = parse_rcpt_params(params, self._extensions, esmtp=self.esmtp)
        if not recipient.is_ascii and not self.smtputf8:
            return BadCommand(r.NON_ASCII_NEEDS_SMTPUTF8)
        if self.recipients >= self.max_recipients:
            return BadCommand(r.TOO_MANY_RECIPIENTS)
        return Rcpt(recipient, rcpt_params)

    def _cmd_data(self, arg: str) -> Event:
        if arg.strip():
            return BadCommand(r.syntax("5.5.4", "Syntax: DATA"))
        if self.body == "BINARYMIME":
            return BadCommand(r.BINARYMIME_NEEDS_BDAT)
        return Data()

    def _parse_bdat(self, arg: str) -> tuple[int, bool] | None:
        match = _abnf.BDAT_RE.fullmatch(arg)
        if match is None:
            return None
        return int(match["size"]), match["last"] is not None

    def _cmd_bdat(self, arg: str) -> Event | type[NEED_DATA]:
        if not self._extensions.chunking:
            return self._discard_chunk(arg, r.NOT_IMPLEMENTED)
        parsed = self._parse_bdat(arg)
        if parsed is None:
            return BadCommand(r.syntax("5.5.4", "Syntax: BDAT chunk-size [LAST]"))
        size, last = parsed
        self._chunk = ChunkReader(size)
        self._chunk_last = last
        self._chunk_error = None
        self._state = State.BDAT
        return self._next_chunk_event()

    def _discard_chunk(self, arg: str, error: r.Reply) -> Event | type[NEED_DATA]:
        """A refused BDAT still owns its octets (RFC 3030 §2): read them, then refuse."""
        parsed = self._parse_bdat(arg)
        if parsed is None:
            return BadCommand(error)
        self._chunk = ChunkReader(parsed[0])
        self._chunk_last = parsed[1]
        self._chunk_error = error
        self._chunk_return = self._state
        self._state = State.BDAT
        return self._next_chunk_event()

    def _cmd_rset(self, arg: str) -> Event:
        return BadCommand(r.syntax("5.5.4", "Syntax: RSET")) if arg.strip() else Rset()

    def _cmd_noop(self, arg: str) -> Event:
        return Noop()

    def _cmd_quit(self, arg: str) -> Event:
        return BadCommand(r.syntax("5.5.4", "Syntax: QUIT")) if arg.strip() else Quit()

    def _cmd_vrfy(self, arg: str) -> Event:
        arg = arg.strip()
        return Vrfy(arg) if arg else BadCommand(r.syntax("5.5.4", "Syntax: VRFY address"))

    def _cmd_expn(self, arg: str) -> Event:
        if not self._extensions.expn:
            return BadCommand(r.NOT_IMPLEMENTED)
        arg = arg.strip()
        return Expn(arg) if arg else BadCommand(r.syntax("5.5.4", "Syntax: EXPN list"))

    def _cmd_help(self, arg: str) -> Event:
        if not self._extensions.help:
            return BadCommand(r.NOT_IMPLEMENTED)
        return Help(arg.strip() or None)

    def _cmd_verb(self, arg: str) -> Event:
        if not self._extensions.verb:
            return BadCommand(r.NOT_IMPLEMENTED)
        return Verb(arg.strip() or None)

    def _cmd_etrn(self, arg: str) -> Event:
        if not self._extensions.etrn:
            return BadCommand(r.NOT_IMPLEMENTED)
        node = arg.strip()
        if _abnf.ETRN_RE.fullmatch(node) is None:
            return BadCommand(r.syntax("5.5.4", "Syntax: ETRN [@|#]node"))
        return Etrn(node)

    def _cmd_auth(self, arg: str) -> Event:
        if not self._extensions.auth:
            if self._extensions.auth_needs_tls and not self.tls:
                return BadCommand(r.AUTH_NEEDS_TLS)
            return BadCommand(r.AUTH_NOT_ENABLED)
        if self._authenticated:
            return BadCommand(r.ALREADY_AUTHENTICATED)
        match = _abnf.AUTH_RE.fullmatch(arg.strip())
        if match is None:
            return BadCommand(r.syntax("5.5.4", "Syntax: AUTH mechanism [initial-response]"))
        mechanism = match["mech"].upper()
        if mechanism not in self._extensions.auth or mechanism not in _sasl.MECHANISMS:
            return BadCommand(r.UNKNOWN_MECHANISM)
        self._sasl = _sasl.start(mechanism)
        initial = match["initial"]
        if initial is None:
            return self._sasl_event(self._sasl.step(None))
        return self._sasl_response(initial)

    def _sasl_response(self, line: str) -> Event:
        """One client line of the exchange (or the initial response): decode, step."""
        if line == "*":
            return AuthCancelled(_sasl.CANCELLED)
        data = _sasl.decode_response(line)
        if data is None or self._sasl is None:
            return BadCommand(_sasl.BAD_BASE64)
        return self._sasl_event(self._sasl.step(data))

    def _sasl_event(self, step: _sasl.Step) -> Event:
        mech = self._sasl.name if self._sasl is not None else ""
        if isinstance(step, _sasl.Challenge):
            return AuthChallenge(mech, _sasl.challenge_reply(step.data))
        if isinstance(step, _sasl.Credentials):
            return AuthCredentials(mech, step.authzid, step.authcid, step.password)
        if isinstance(step, _sasl.Lookup):
            return AuthLookup(mech, step.authzid, step.authcid)
        if isinstance(step, _sasl.Outcome):
            return AuthOutcome(mech, step.authzid, step.authcid, step.success)
        return BadCommand(step.reply)

    def scram_challenge(
        self, salt: bytes, iterations: int, stored: bytes, server: bytes
    ) -> r.Reply:
        """The reply to ``AuthLookup``: the server-first-message built from the user's keys.

        For an unknown user pass decoy keys: the exchange then fails at the proof, as for
        a wrong password, so SCRAM does not tell who exists (RFC 5802 §9).
        """
        if not isinstance(self._sasl, _sasl.ScramSha256):
            raise LocalProtocolError("scram_challenge() outside a SCRAM exchange")
        return _sasl.challenge_reply(self._sasl.server_first(salt, iterations, stored, server))

    def _cmd_starttls(self, arg: str) -> Event:
        if self.tls:
            return BadCommand(r.TLS_ACTIVE)
        if arg.strip():
            return BadCommand(r.syntax("5.5.4", "Syntax: STARTTLS"))
        if not self._extensions.starttls:
            return BadCommand(r.TLS_NOT_AVAILABLE)
        return StartTls()

    # -- output --------------------------------------------------------------------------

    def send_per_recipient(self, replies: list[r.Reply]) -> bytes:
        """LMTP: the end of a message answered with one reply per accepted recipient."""
        if not self.lmtp or not isinstance(self._pending, EndOfData | MessageRejected):
            raise LocalProtocolError("per-recipient replies belong to the end of an LMTP message")
        if len(replies) != max(self.recipients, 1):
            raise LocalProtocolError(
                f"{len(replies)} replies for {self.recipients} accepted recipients"
            )
        head = b"".join(reply.to_bytes() for reply in replies[:-1])
        self._errors += sum(reply.code >= 500 for reply in replies[:-1])
        return head + self._send(replies[-1])

    def send(self, reply: r.Reply) -> bytes:
        """Answer the pending event (or greet, or close with 421); returns the wire bytes.

        In LMTP the reply to the end of a message is given for every accepted recipient.
        """
        if (
            self.lmtp
            and reply.code != 421
            and isinstance(self._pending, EndOfData | MessageRejected)
            and self.recipients > 1
        ):
            return self.send_per_recipient([reply] * self.recipients)
        return self._send(reply)

    def _send(self, reply: r.Reply) -> bytes:
        out = reply.to_bytes()
        if self._state is State.GREETING:
            self._state = State.INIT if reply.code == 220 else State.CLOSED
            return out
        if reply.code == 421:
            self._enter(State.CLOSED)
            self._pending = None
            return out
        event = self._pending
        if event is None:
            raise LocalProtocolError(f"no command is waiting for a reply: {reply}")
        target = TRANSITIONS.get((self._pending_key, reply.code // 100))
        if target is None and self._state is State.DATA:
            # Only a 2xx/4xx/5xx verdict can end DATA; anything else would leave the
            # connection reading a message that is already over.
            raise LocalProtocolError(f"the end of a message needs a final reply, not {reply}")
        self._pending = None
        if target is None and self._state is State.AUTH:
            target = State.READY  # a malformed line ends the SASL exchange (RFC 4954 §4)
        if target is not None:
            self._on_transition(event, target, reply.code)
        error = reply.code >= 500
        if isinstance(event, _JUNK):
            self._junk += 1
            error = error or self._junk > self.max_junk
        if error:
            self._errors += 1
            if self._errors >= self.max_errors and self._state is not State.CLOSED:
                self._enter(State.CLOSED)
                out += r.too_many_errors(self.hostname).to_bytes()
        return out

    def _on_transition(self, event: Event, target: State, code: int) -> None:
        if isinstance(event, Helo | Ehlo):
            self.helo = event.domain
            self.esmtp = isinstance(event, Ehlo)
        elif isinstance(event, Mail):
            self.smtputf8 = event.params.smtputf8
            self.body = event.params.body
        elif isinstance(event, Rcpt):
            self.recipients += 1
        elif isinstance(event, Data):
            # After "DATA<LF>" a "." line does not end the text: that takes CRLF "." CRLF.
            self._data = DataReader(
                self._limit(), normalize=self.normalize_bare_lf, at_crlf=self._line_crlf
            )
        elif isinstance(event, EndOfData) and code // 100 == 2:
            self._junk = 0  # a client that delivers mail may RSET/NOOP between messages
        elif isinstance(event, AuthCredentials | AuthOutcome) and code == 235:
            self._authenticated = True
        elif isinstance(event, StartTls):
            self._buf.clear()
        elif isinstance(event, Rset) and self._state is State.INIT:
            target = State.INIT  # RSET does not stand in for HELO/EHLO (RFC 5321 §4.1.4)
        self._enter(target)

    def _enter(self, target: State) -> None:
        if target is not State.AUTH:
            self._sasl = None
        if target in TRANSACTION_ENDS:
            self._reset_transaction()
            self._data = None
        self._state = target


# The command table: verb → parser. ``_parse_command`` checks the verb is allowed first.
_CommandParser = Callable[[ServerConnection, str], Event | type[NEED_DATA]]
_HANDLERS: dict[str, _CommandParser] = {
    "HELO": ServerConnection._cmd_helo,
    "EHLO": ServerConnection._cmd_ehlo,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "QUIT": ServerConnection._cmd_quit,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "HELP": ServerConnection._cmd_help,
    "VERB": ServerConnection._cmd_verb,
    "ETRN": ServerConnection._cmd_etrn,
    "AUTH": ServerConnection._cmd_auth,
    "STARTTLS": ServerConnection._cmd_starttls,
}
