"""``petrel send``: an SMTP/LMTP client for testing any server, printing the conversation.

Plain blocking sockets (and ``ssl``) carry the bytes; every command and every reply
goes through the sans-IO ``smtp.ClientConnection``, so pipelined replies are matched
to their commands by the core and nothing here parses SMTP by hand. Each stage that
can fail has its own exit status (`Exit`), so scripts can tell a refused RCPT from
a failed TLS handshake.
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from petrel import smtp
from petrel.client.sasl import AuthError, Mechanism, choose_mechanism, make_mechanism
from petrel.client.transcript import Transcript

__all__ = ["STAGES", "Exit", "SendOptions", "SendResult", "send"]

STAGES = ("connect", "ehlo", "tls", "auth", "mail", "rcpt", "data")


class Exit(IntEnum):
    """Exit statuses of ``petrel send``; each failure stage has its own."""

    OK = 0
    LOCAL = 1  # a local problem: unreadable --data file, bad option combination
    USAGE = 2  # argparse
    CONNECT = 3  # could not connect (refused, unreachable, DNS, timeout)
    GREETING = 4  # no 220 greeting
    EHLO = 5  # EHLO/HELO (LHLO) refused
    TLS = 6  # STARTTLS not offered/refused, handshake or certificate failure
    AUTH = 7  # no usable mechanism, credentials refused, SCRAM server proof bad
    MAIL = 8  # MAIL FROM refused
    RCPT = 9  # every RCPT TO refused
    DATA = 10  # DATA refused, or the message refused after its text


EXIT_HELP = """\
exit status:
  0   the message was accepted (or --quit-after reached its stage)
  1   local error (unreadable --data file, conflicting options)
  2   usage error
  3   connect failed          4   no 220 greeting        5   EHLO/HELO/LHLO refused
  6   TLS failed              7   AUTH failed            8   MAIL FROM refused
  9   all RCPT TO refused     10  DATA or the message text refused
A connection lost or timed out counts as a failure of the stage it happened in.
"""

_DSN_NOTIFY_RE = re.compile(r"NEVER|(SUCCESS|FAILURE|DELAY)(,(SUCCESS|FAILURE|DELAY))*", re.I)
_QUEUED_AS_RE = re.compile(r"queued as ([A-Za-z0-9._-]+)", re.I)
_ID_FIRST_RE = re.compile(r"([A-Za-z0-9]*[0-9][A-Za-z0-9]*) ")


@dataclass
class SendOptions:
    """Everything ``petrel send`` was told; the CLI fills this in."""

    host: str = "localhost"
    port: int = 25
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    helo: str = "localhost"
    lmtp: bool = False
    starttls: str | None = None  # None | "required" | "optional"
    implicit_tls: bool = False
    insecure: bool = False
    ca_file: str | None = None
    auth: str | None = None  # mechanism name or "auto"
    user: str | None = None
    password: str | None = None
    message: bytes = b""
    pipeline: bool = False
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None
    size: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    quit_after: str | None = None
    timeout: float = 30.0
    data_lines: int = 40  # message lines shown in the transcript; 0 = all


@dataclass
class SendResult:
    """The machine-readable summary behind ``--json``."""

    exit: Exit = Exit.OK
    stage: str | None = None
    error: str | None = None
    queue_id: str | None = None
    tls: dict[str, Any] | None = None
    auth: str | None = None
    replies: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": int(self.exit),
            "ok": self.exit is Exit.OK,
            "failed_stage": self.stage,
            "error": self.error,
            "queue_id": self.queue_id,
            "tls": self.tls,
            "auth_mechanism": self.auth,
            "recipients_accepted": self.accepted,
            "recipients_refused": self.refused,
            "replies": self.replies,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }


class _Failed(Exception):
    """A stage failed; ``broken`` means the connection is unusable (no QUIT)."""

    def __init__(self, code: Exit, message: str, *, broken: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.broken = broken


class _QuitAfter(Exception):
    """``--quit-after`` reached its stage: say QUIT and stop, successfully."""


class _Session:
    def __init__(self, opts: SendOptions, out: Transcript) -> None:
        self.opts = opts
        self.out = out
        self.conn = smtp.ClientConnection(lmtp=opts.lmtp)
        self.sock: socket.socket | None = None
        self.result = SendResult()
        self.stage = Exit.CONNECT
        self.start = time.monotonic()

    # -- plumbing ------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.monotonic() - self.start

    def _send(self, wire: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(wire)
        except OSError as exc:
            message = f"connection lost while sending: {exc}"
            raise _Failed(self.stage, message, broken=True) from None

    def _read(self, count: int = 1) -> list[smtp.ServerReply]:
        """The next ``count`` replies, each printed as it is complete."""
        assert self.sock is not None
        replies: list[smtp.ServerReply] = []
        while len(replies) < count:
            try:
                event = self.conn.next_event()
            except smtp.RemoteProtocolError as exc:
                raise _Failed(
                    self.stage, f"protocol error from the server: {exc}", broken=True
                ) from None
            if event is smtp.NEED_DATA:
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    message = "timed out waiting for the server"
                    raise _Failed(self.stage, message, broken=True) from None
                except OSError as exc:
                    raise _Failed(self.stage, f"connection lost: {exc}", broken=True) from None
                if not data:
                    raise _Failed(self.stage, "the server closed the connection", broken=True)
                self.conn.receive_data(data)
                continue
            assert isinstance(event, smtp.ServerReply)
            self._show_reply(event)
            replies.append(event)
        return replies

    def _show_reply(self, event: smtp.ServerReply) -> None:
        reply = event.reply
        self.result.replies.append(
            {
                "command": event.command,
                "code": reply.code,
                "status": reply.status,
                "lines": list(reply.lines),
                "t": round(self._elapsed(), 6),
            }
        )
        raw = event.raw or tuple(reply.to_bytes().decode().splitlines())
        for line in raw:
            comment = None
            if event.command == "AUTH" and reply.code == 334:
                comment = _decode_b64(line[4:])
            self.out.server(line, comment)

    def _command(self, verb: str, argument: str = "", *, shown: str | None = None) -> bytes:
        wire = self.conn.send_command(verb, argument)
        self.out.client(shown if shown is not None else wire.decode("utf-8").rstrip("\r\n"))
        return wire

    def _one(self, verb: str, argument: str = "") -> smtp.Reply:
        self._send(self._command(verb, argument))
        return self._read()[0].reply

    def _fail(self, code: Exit, what: str, reply: smtp.Reply | None = None) -> _Failed:
        text = f"{what}: {reply}" if reply is not None else what
        return _Failed(code, text)

    def _check_quit_after(self, stage: str) -> None:
        if self.opts.quit_after == stage:
            raise _QuitAfter

    # -- the stages ----------------------------------------------------------------------

    def run(self) -> SendResult:
        try:
            self._connect()
            self._greeting()
            self._hello()
            if self.opts.starttls:
                self._starttls()
            self._check_quit_after("tls")
            if self.opts.auth:
                self._authenticate()
            self._check_quit_after("auth")
            self._transaction()
            self._quit()
        except _QuitAfter:
            self.out.note(f"stopping after {self.opts.quit_after} as asked (--quit-after)")
            self._quit()
        except _Failed as exc:
            self.result.exit = exc.code
            self.result.stage = exc.code.name.lower()
            self.result.error = str(exc)
            self.out.note(f"failed at {self.result.stage}: {exc}")
            if not exc.broken:
                self._quit()
        finally:
            if self.sock is not None:
                self.sock.close()
            self.result.timings["total"] = self._elapsed()
        return self.result

    def _connect(self) -> None:
        opts = self.opts
        self.out.note(f"Trying {opts.host}:{opts.port}...")
        try:
            self.sock = socket.create_connection((opts.host, opts.port), timeout=opts.timeout)
        except OSError as exc:
            raise _Failed(
                Exit.CONNECT, f"cannot connect to {opts.host}:{opts.port}: {exc}", broken=True
            ) from None
        peer = self.sock.getpeername()
        self.out.note(f"Connected to {opts.host} [{peer[0]}]:{peer[1]}")
        self.result.timings["connect"] = self._elapsed()
        if opts.implicit_tls:
            self.stage = Exit.TLS
            self._handshake()

    def _greeting(self) -> None:
        self.stage = Exit.GREETING
        reply = self._read()[0].reply
        self.result.timings["greeting"] = self._elapsed()
        if reply.code != 220:
            raise self._fail(Exit.GREETING, "no 220 greeting", reply)
        self._check_quit_after("connect")

    def _hello(self) -> None:
        self.stage = Exit.EHLO
        verb = "LHLO" if self.opts.lmtp else "EHLO"
        reply = self._one(verb, self.opts.helo)
        if reply.code in (500, 502) and not self.opts.lmtp:
            self.out.note("EHLO not understood; falling back to HELO")
            reply = self._one("HELO", self.opts.helo)
        if reply.code != 250:
            raise self._fail(Exit.EHLO, f"{verb} refused", reply)
        self._check_quit_after("ehlo")

    def _starttls(self) -> None:
        self.stage = Exit.TLS
        if not self.conn.supports("STARTTLS"):
            if self.opts.starttls == "optional":
                self.out.note("STARTTLS not offered; going on without TLS (--starttls-optional)")
                return
            raise self._fail(Exit.TLS, "STARTTLS not offered by the server")
        reply = self._one("STARTTLS")
        if reply.code != 220:
            if self.opts.starttls == "optional":
                self.out.note("STARTTLS refused; going on without TLS (--starttls-optional)")
                return
            raise self._fail(Exit.TLS, "STARTTLS refused", reply)
        self._handshake()
        self.conn.tls_established()
        self.stage = Exit.TLS
        reply = self._one("LHLO" if self.opts.lmtp else "EHLO", self.opts.helo)
        if reply.code != 250:
            raise self._fail(Exit.TLS, "EHLO after STARTTLS refused", reply)

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.opts.ca_file)
        if self.opts.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _handshake(self) -> None:
        assert self.sock is not None
        started = time.monotonic()
        try:
            context = self._tls_context()
            self.sock = context.wrap_socket(self.sock, server_hostname=self.opts.host)
        except (ssl.SSLError, OSError) as exc:
            raise _Failed(Exit.TLS, f"TLS handshake failed: {exc}", broken=True) from None
        assert isinstance(self.sock, ssl.SSLSocket)
        cipher = self.sock.cipher()
        verified = "not verified (--insecure)" if self.opts.insecure else "verified"
        self.result.tls = {
            "version": self.sock.version(),
            "cipher": cipher[0] if cipher else None,
            "verified": not self.opts.insecure,
        }
        self.result.timings["tls_handshake"] = time.monotonic() - started
        self.out.note(
            f"TLS started: {self.sock.version()} {cipher[0] if cipher else ''}, "
            f"peer certificate {verified}"
        )

    def _authenticate(self) -> None:
        self.stage = Exit.AUTH
        opts = self.opts
        offered = self.conn.auth_mechanisms
        name = choose_mechanism(opts.auth or "auto", offered)
        if name is None:
            offers = " ".join(offered) or "none"
            raise self._fail(Exit.AUTH, f"no usable AUTH mechanism (server offers: {offers})")
        if offered and name not in offered:
            self.out.note(f"the server does not offer {name}; trying it anyway")
        mech = make_mechanism(name, opts.user or "", opts.password or "")
        self.result.auth = name
        initial = mech.initial_response()
        if initial is None:
            self._send(self._command("AUTH", name))
        else:
            shown, decoded = mech.describe(initial)
            encoded = base64.b64encode(initial).decode("ascii") or "="
            wire = self.conn.send_command("AUTH", f"{name} {encoded}")
            self.out.client(f"AUTH {name} {shown}", decoded)
            self._send(wire)
        try:
            self._sasl_loop(mech)
        except AuthError as exc:
            raise _Failed(Exit.AUTH, str(exc)) from None

    def _sasl_loop(self, mech: Mechanism) -> None:
        while True:
            reply = self._read()[0].reply
            if reply.code == 235:
                mech.success(None)
                return
            if reply.code != 334:
                raise self._fail(Exit.AUTH, "authentication refused", reply)
            try:
                challenge = base64.b64decode(reply.lines[0].strip(), validate=True)
            except (binascii.Error, ValueError):
                self._send(self.conn.send_auth_response("*"))
                self.out.client("*", "cancelled: the challenge is not base64")
                self._read()
                raise self._fail(Exit.AUTH, "malformed 334 challenge", reply) from None
            try:
                response = mech.respond(challenge)
            except AuthError:
                # Leave the exchange properly before giving up (RFC 4954 §4).
                self._send(self.conn.send_auth_response("*"))
                self.out.client("*", "cancelled")
                self._read()
                raise
            shown, decoded = mech.describe(response)
            self.out.client(shown, decoded)
            self._send(self.conn.send_auth_response(base64.b64encode(response).decode()))

    # -- the mail transaction ------------------------------------------------------------

    def _transaction(self) -> None:
        """MAIL, RCPT… and DATA through the core's ``ClientTransaction``, stage by stage."""
        opts = self.opts
        notify = tuple(opts.notify.upper().split(",")) if opts.notify else ()
        mail = smtp.MailFrom(
            opts.sender,
            size=len(opts.message) if opts.size else None,
            body="8BITMIME" if opts.eightbitmime else None,
            smtputf8=opts.smtputf8,
            ret=opts.ret.upper() if opts.ret else None,
            envid=opts.envid,
        )
        stop = {"mail": "MAIL", "rcpt": "RCPT"}.get(opts.quit_after or "")
        txn = smtp.ClientTransaction(
            self.conn,
            mail,
            [smtp.RcptTo(r, notify) for r in opts.recipients],
            opts.message,
            pipelining=opts.pipeline,
            stop_after=stop,
        )
        for keyword, what in txn.dropped:
            self.out.note(f"the server does not offer {keyword}; {what} not sent")
        if opts.pipeline and not txn.pipelining:
            self.out.note("the server does not offer PIPELINING; one command at a time")
        self.stage = Exit.MAIL
        self._send_commands(txn)  # MAIL, and with pipelining every RCPT and DATA (RFC 2920)
        self._after_mail(self._next_reply(txn))
        self.stage = Exit.RCPT
        for recipient in opts.recipients:
            self._send_commands(txn)
            self._after_rcpt(recipient, self._next_reply(txn))
        if not txn.pipelining or opts.quit_after == "rcpt":
            self._after_rcpts()
        self.stage = Exit.DATA
        self._send_commands(txn)
        data = self._next_reply(txn)
        if txn.pipelining:
            if txn.text_due and not txn.accepted:
                self._text(txn)  # 354 though every RCPT was refused: end it, deliver nothing
            self._after_rcpts()
        self._after_data(data)
        self._message(txn)

    def _send_commands(self, txn: smtp.ClientTransaction) -> None:
        lines = txn.commands()
        for wire in lines:
            self.out.client(wire.decode("utf-8").rstrip("\r\n"))
        if lines:
            self._send(b"".join(lines))

    def _next_reply(self, txn: smtp.ClientTransaction) -> smtp.Reply:
        event = self._read()[0]
        txn.receive(event)
        return event.reply

    def _text(self, txn: smtp.ClientTransaction) -> list[smtp.ServerReply]:
        """Send the text, show it, and read its replies (LMTP: one per recipient)."""
        wire = txn.send_text()
        self._show_text(wire)
        self._send(wire)
        replies = self._read(txn.replies_due)
        for event in replies:
            txn.receive(event)
        return replies

    def _after_mail(self, reply: smtp.Reply) -> None:
        self.result.timings["mail"] = self._elapsed()
        if reply.code != 250:
            raise self._fail(Exit.MAIL, "MAIL FROM refused", reply)
        self._check_quit_after("mail")

    def _after_rcpt(self, recipient: str, reply: smtp.Reply) -> None:
        if reply.code // 100 == 2:
            self.result.accepted.append(recipient)
        else:
            self.result.refused.append(recipient)

    def _after_rcpts(self) -> None:
        self.result.timings["rcpt"] = self._elapsed()
        if not self.result.accepted:
            raise self._fail(Exit.RCPT, "every recipient was refused")
        if self.result.refused:
            self.out.note(
                f"{len(self.result.refused)} of {len(self.opts.recipients)} recipients refused; "
                "sending to the rest"
            )
        self._check_quit_after("rcpt")

    def _after_data(self, reply: smtp.Reply) -> None:
        if reply.code != 354:
            raise self._fail(Exit.DATA, "DATA refused", reply)

    def _message(self, txn: smtp.ClientTransaction) -> None:
        self.stage = Exit.DATA
        replies = self._text(txn)
        self.result.timings["data"] = self._elapsed()
        good = [r.reply for r in replies if r.reply.code // 100 == 2]
        for event in good:
            self.result.queue_id = self.result.queue_id or _queue_id(event)
        if not good:
            raise self._fail(Exit.DATA, "message refused", replies[-1].reply)
        if len(good) < len(replies):
            self.out.note(f"{len(replies) - len(good)} of {len(replies)} deliveries refused")
        self._check_quit_after("data")

    def _show_text(self, wire: bytes) -> None:
        lines = wire.split(b"\r\n")[:-1]  # the last element is empty (text ends in CRLF)
        body, dot = lines[:-1], lines[-1]
        limit = self.opts.data_lines
        shown = body if limit <= 0 or len(body) <= limit else body[:limit]
        for line in shown:
            self.out.client(line.decode("utf-8", "replace"))
        if len(shown) < len(body):
            rest = body[len(shown) :]
            octets = sum(len(x) + 2 for x in rest)
            self.out.dim(f"   [... {len(rest)} more lines ({octets} octets) not shown ...]")
        self.out.client(dot.decode())

    def _quit(self) -> None:
        """Say goodbye if the connection still stands; a failure here changes nothing."""
        if self.sock is None:
            return
        try:
            self._send(self._command("QUIT"))
            while self.conn.waiting_for and self.conn.waiting_for[-1] == "QUIT":
                self._read()
        except (_Failed, smtp.LocalProtocolError):
            pass


def _decode_b64(text: str) -> str | None:
    try:
        decoded = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.decode("utf-8", "replace") if decoded else None


def _queue_id(reply: smtp.Reply) -> str | None:
    """The queue id in a 250: Postfix's ``queued as X``, or Sendmail/Petrel's leading id."""
    text = " ".join(reply.lines)
    match = _QUEUED_AS_RE.search(text) or _ID_FIRST_RE.match(text)
    return match[1] if match else None


def send(opts: SendOptions, out: Transcript) -> SendResult:
    """Run one session; the result carries the exit status and the ``--json`` summary."""
    return _Session(opts, out).run()


def valid_notify(value: str) -> bool:
    return _DSN_NOTIFY_RE.fullmatch(value) is not None


def split_server(value: str, default_port: int) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[v6]:PORT`` → (host, port)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if port and not port.isdigit():
        raise ValueError(f"bad port in --server {value!r}")
    return host or "localhost", int(port) if port else default_port


def default_port(*, lmtp: bool, implicit_tls: bool) -> int:
    return 24 if lmtp else 465 if implicit_tls else 25


def join_recipients(values: Sequence[str]) -> list[str]:
    """``--to a,b --to c`` → [a, b, c]."""
    return [r.strip() for v in values for r in v.split(",") if r.strip()]
