"""A scripted SMTP peer on 127.0.0.1 built on ``ServerConnection``, for ``petrel send`` tests.

It answers like a well-behaved server except at the one stage it is told to refuse,
offers STARTTLS (with a test certificate) and AUTH PLAIN/LOGIN/SCRAM-SHA-256 when asked,
and records what the client sent so tests can check credentials and message bytes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field

from petrel.policy.users import scram_secret
from petrel.smtp import (
    NEED_DATA,
    PAUSED,
    AuthChallenge,
    AuthCredentials,
    AuthLookup,
    AuthOutcome,
    BadCommand,
    ConnectionClosed,
    Data,
    DataChunk,
    Ehlo,
    EndOfData,
    Event,
    Extensions,
    Helo,
    Mail,
    MessageRejected,
    Quit,
    Rcpt,
    Reply,
    ServerConnection,
    StartTls,
    reply,
)
from petrel.smtp import replies as r

HOST = "peer.test"
DATE = "Thu, 27 Mar 2008 23:14:59 -0700"
REFUSE = {
    "greeting": reply(554, None, f"{HOST} no service for you"),
    "ehlo": reply(550, "5.7.1", "go away"),
    "tls": reply(454, "4.7.0", "TLS not available due to temporary reason"),
    "auth": reply(535, "5.7.8", "Authentication credentials invalid"),
    "mail": reply(550, "5.7.1", "Sender refused"),
    "rcpt": reply(550, "5.1.1", "User unknown"),
    "data": reply(554, "5.5.1", "No DATA for you"),
    "message": reply(554, "5.7.1", "Message refused: spam"),
}
SCRAM_SALT = b"0123456789abcdef"
SCRAM_ITERATIONS = 4096


@dataclass
class ScriptedPeer:
    refuse: str | None = None
    starttls: bool = False
    auth: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    users: dict[str, str] = field(default_factory=lambda: {"willie": "funsmtp"})
    received: list[bytes] = field(default_factory=list)
    credentials: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with sock:
                sock.settimeout(10)
                with contextlib.suppress(OSError, ssl.SSLError):
                    self._session(sock)

    def _session(self, sock: socket.socket) -> None:
        ext = Extensions(starttls=self.starttls, auth=self.auth)
        conn = ServerConnection(HOST, extensions=ext)
        if self.refuse == "greeting":
            sock.sendall(conn.send(REFUSE["greeting"]))
            # RFC 5321 §3.1: after a 554 greeting, answer commands with 503 until QUIT
            sock.recv(1024)
            sock.sendall(b"221 2.0.0 bye\r\n")
            return
        sock.sendall(conn.send(r.greeting(HOST, DATE)))
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if event is PAUSED or isinstance(event, ConnectionClosed):
                return
            if isinstance(event, DataChunk):
                body += event.data
                continue
            answer = self._answer(conn, event, body)
            sock.sendall(conn.send(answer))
            if isinstance(event, StartTls) and answer.code == 220:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                assert self.certfile is not None
                context.load_cert_chain(self.certfile, self.keyfile)
                sock = context.wrap_socket(sock, server_side=True)
                conn.tls_established()
                ext = ext.with_changes(starttls=False)
                conn.extensions = ext
            if isinstance(event, Quit) or answer.code == 421:
                return

    def _answer(self, conn: ServerConnection, event: Event, body: bytearray) -> Reply:
        refuse = self.refuse
        if isinstance(event, Ehlo | Helo):
            if refuse == "ehlo":
                return REFUSE["ehlo"]
            first = f"{HOST} Hello {event.domain} [127.0.0.1], pleased to meet you"
            return conn.ehlo_reply(first) if isinstance(event, Ehlo) else reply(250, None, first)
        if isinstance(event, StartTls):
            return REFUSE["tls"] if refuse == "tls" else r.READY_FOR_TLS
        if isinstance(event, AuthChallenge):
            return event.reply  # the SASL exchange itself runs in Petrel's sans-IO core
        if isinstance(event, AuthCredentials):
            return self._verdict(event.authcid, event.password)
        if isinstance(event, AuthLookup):
            secret = scram_secret(self.users.get(event.authcid, ""), SCRAM_SALT, SCRAM_ITERATIONS)
            return conn.scram_challenge(
                secret.salt, secret.iterations, secret.stored_key, secret.server_key
            )
        if isinstance(event, AuthOutcome):
            self.credentials.append((event.authcid, "<scram>"))
            if refuse == "auth" or not event.success:
                return REFUSE["auth"]
            return reply(235, "2.0.0", "OK Authenticated")
        if isinstance(event, Mail):
            return REFUSE["mail"] if refuse == "mail" else r.sender_ok(str(event.sender or ""))
        if isinstance(event, Rcpt):
            return REFUSE["rcpt"] if refuse == "rcpt" else r.recipient_ok(str(event.recipient))
        if isinstance(event, Data):
            return REFUSE["data"] if refuse == "data" else r.START_DATA
        if isinstance(event, EndOfData):
            self.received.append(bytes(body))
            body.clear()
            return REFUSE["message"] if refuse == "message" else r.message_accepted("Q1D2PEER")
        if isinstance(event, MessageRejected | BadCommand):
            return event.reply
        if isinstance(event, Quit):
            return r.closing(HOST)
        return r.OK

    def _verdict(self, user: str, password: str) -> Reply:
        self.credentials.append((user, password))
        if self.refuse == "auth" or self.users.get(user) != password:
            return REFUSE["auth"]
        return reply(235, "2.0.0", "OK Authenticated")
