"""A scripted SMTP peer on 127.0.0.1 built on ``ServerConnection``, for ``petrel send`` tests.

It answers like a well-behaved server except at the one stage it is told to refuse,
offers STARTTLS (with a test certificate) and AUTH PLAIN/LOGIN/SCRAM-SHA-256 when asked,
and records what the client sent so tests can check credentials and message bytes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import socket
import ssl
import threading
from dataclasses import dataclass, field

from petrel.smtp import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthResponse,
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
from petrel.smtp import _replies as r

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
        sasl: list[str] = []
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
            answer = self._answer(conn, event, body, sasl)
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

    def _answer(
        self, conn: ServerConnection, event: Event, body: bytearray, sasl: list[str]
    ) -> Reply:
        refuse = self.refuse
        if isinstance(event, Ehlo | Helo):
            if refuse == "ehlo":
                return REFUSE["ehlo"]
            first = f"{HOST} Hello {event.domain} [127.0.0.1], pleased to meet you"
            return conn.ehlo_reply(first) if isinstance(event, Ehlo) else reply(250, None, first)
        if isinstance(event, StartTls):
            return REFUSE["tls"] if refuse == "tls" else r.READY_FOR_TLS
        if isinstance(event, Auth | AuthResponse):
            return self._auth(event, sasl)
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

    def _auth(self, event: Auth | AuthResponse, sasl: list[str]) -> Reply:
        if isinstance(event, Auth):
            sasl[:] = [event.mechanism]
            data = event.initial_response
        else:
            data = event.data
        mechanism = sasl[0]
        if mechanism == "LOGIN":
            if data is not None and isinstance(event, AuthResponse):
                sasl.append(base64.b64decode(data).decode())
            if len(sasl) == 1:
                return reply(334, None, "VXNlcm5hbWU6")
            if len(sasl) == 2:
                return reply(334, None, "UGFzc3dvcmQ6")
            return self._verdict(sasl[1], sasl[2])
        if mechanism == "PLAIN":
            _, user, password = base64.b64decode(data or "").decode().split("\0")
            return self._verdict(user, password)
        return self._scram(data or "", sasl)

    def _verdict(self, user: str, password: str) -> Reply:
        self.credentials.append((user, password))
        if self.refuse == "auth" or self.users.get(user) != password:
            return REFUSE["auth"]
        return reply(235, "2.0.0", "OK Authenticated")

    def _scram(self, data: str, sasl: list[str]) -> Reply:
        message = base64.b64decode(data).decode()
        if len(sasl) == 1:  # client-first
            bare = message[3:]
            nonce = dict(p.split("=", 1) for p in bare.split(","))["r"] + "SERVERNONCE"
            first = f"r={nonce},s={base64.b64encode(SCRAM_SALT).decode()},i={SCRAM_ITERATIONS}"
            sasl += [bare, first]
            return reply(334, None, base64.b64encode(first.encode()).decode())
        if len(sasl) == 3:  # client-final
            bare, first = sasl[1], sasl[2]
            user = dict(p.split("=", 1) for p in bare.split(","))["n"]
            without_proof, _, proof = message.rpartition(",p=")
            password = self.users.get(user, "")
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), SCRAM_SALT, 4096)
            client_key = hmac.digest(salted, b"Client Key", "sha256")
            auth_message = f"{bare},{first},{without_proof}".encode()
            signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
            expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
            self.credentials.append((user, "<scram>"))
            if self.refuse == "auth" or base64.b64decode(proof) != expected:
                return REFUSE["auth"]
            server_key = hmac.digest(salted, b"Server Key", "sha256")
            verifier = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
            sasl.append("final")
            return reply(334, None, base64.b64encode(f"v={verifier}".encode()).decode())
        return reply(235, "2.0.0", "OK Authenticated")
