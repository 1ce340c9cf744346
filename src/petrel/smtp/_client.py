"""``ClientConnection``: the client side of SMTP and LMTP as a sans-IO state machine.

The application asks for command bytes (``send_command``, ``send_data``, ``send_bdat``),
writes them, feeds what the server says into ``receive_data`` and pulls ``next_event``
for each ``ServerReply`` — matched, in order, to the command it answers, so pipelined
commands (RFC 2920) need no bookkeeping by the caller. LMTP (RFC 2033) is the same
with one reply per accepted recipient after the message text.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from ._errors import LocalProtocolError, RemoteProtocolError
from ._replies import Reply
from ._server import NEED_DATA, _Sentinel

# A reply line: three digits, "-" (more follow) or " " / end (last line), text.
_REPLY_LINE_RE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)(.*)")
# RFC 3463 status code at the start of the text: class.subject.detail
_STATUS_RE = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")
MAX_REPLY_LINE = 4096  # RFC 5321 §4.5.3.1.5 says 512; real servers are longer, not this long
MAX_REPLY_LINES = 256  # a hostile server must not make us buffer without end


@dataclass(frozen=True, slots=True)
class ServerReply:
    """The server's answer to ``command`` (``"CONNECT"`` for the greeting)."""

    command: str
    reply: Reply


def dot_stuff(data: bytes) -> bytes:
    """Message bytes → DATA text: CRLF line ends, leading dots doubled, ``.CRLF`` added.

    Bare LF or CR line ends (a file from disk, a script's output) become CRLF, so what
    goes on the wire can never contain a bare newline (RFC 5321 §2.3.8).
    """
    if b"\r" in data or b"\n" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class ClientConnection:
    """One SMTP (or LMTP) session, client side."""

    def __init__(self, *, lmtp: bool = False) -> None:
        self.lmtp = lmtp
        self.extensions: dict[str, str] = {}  # EHLO/LHLO keywords (upper-case) → parameters
        self._buf = bytearray()
        self._lines: list[tuple[int, str]] = []
        self._expect: deque[str] = deque(["CONNECT"])
        self._accepted_rcpts = 0  # LMTP: replies owed after the message text
        self._tls_pending = False

    # -- what the server offers ------------------------------------------------------------

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions

    @property
    def max_size(self) -> int | None:
        """The peer's SIZE limit (RFC 1870), None when it declares none."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    @property
    def auth_mechanisms(self) -> list[str]:
        return self.extensions.get("AUTH", "").upper().split()

    @property
    def waiting_for(self) -> tuple[str, ...]:
        """Commands sent whose replies have not arrived yet, oldest first."""
        return tuple(self._expect)

    # -- output ------------------------------------------------------------------------------

    def send_command(self, verb: str, argument: str = "") -> bytes:
        """The bytes of one command line; its reply will come as a ``ServerReply``."""
        verb = verb.upper()
        line = f"{verb} {argument}" if argument else verb
        if "\r" in line or "\n" in line:
            raise LocalProtocolError(f"line break inside a command: {line!r}")
        if self._tls_pending:
            raise LocalProtocolError("STARTTLS accepted: finish the handshake first")
        self._expect.append(verb)
        return line.encode("utf-8") + b"\r\n"

    def send_sasl_response(self, response: str) -> bytes:
        """One SASL line after a ``334`` to AUTH (RFC 4954 §4); its reply counts as AUTH's."""
        if "\r" in response or "\n" in response or " " in response:
            raise LocalProtocolError("a SASL response is one base64 word")
        self._expect.append("AUTH")
        return response.encode("ascii") + b"\r\n"

    def send_data(self, message: bytes) -> bytes:
        """The message text after a 354: dot-stuffed and terminated."""
        self._expect.extend(["END"] * self._replies_for_end())
        return dot_stuff(message)

    def send_bdat(self, chunk: bytes, *, last: bool) -> bytes:
        """One CHUNKING command with its octets (RFC 3030)."""
        self._expect.extend(["BDAT"] * (self._replies_for_end() if last else 1))
        return f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk

    def _replies_for_end(self) -> int:
        """After the text: one reply, or in LMTP one per accepted recipient (RFC 2033 §4.2)."""
        count = max(self._accepted_rcpts, 1) if self.lmtp else 1
        self._accepted_rcpts = 0
        return count

    def tls_established(self) -> None:
        """The handshake after ``220`` to STARTTLS is done: EHLO again (RFC 3207 §4.2)."""
        self._tls_pending = False
        self.extensions = {}

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._tls_pending:
            return  # bytes before the handshake are a response-injection attempt; drop them
        self._buf += data

    def next_event(self) -> ServerReply | _Sentinel:
        """The next complete reply, or ``NEED_DATA``; raises RemoteProtocolError."""
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise RemoteProtocolError("reply line too long")
                return NEED_DATA
            raw = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            match = _REPLY_LINE_RE.fullmatch(raw)
            if match is None:
                raise RemoteProtocolError(f"malformed reply line: {raw[:80]!r}")
            code = int(match[1])
            if self._lines and self._lines[0][0] != code:
                raise RemoteProtocolError("reply code changed inside a multi-line reply")
            self._lines.append((code, match[3].decode("utf-8", "replace")))
            if len(self._lines) > MAX_REPLY_LINES:
                raise RemoteProtocolError("too many lines in one reply")
            if match[2] == b"-":
                continue
            return self._finish_reply()

    def _finish_reply(self) -> ServerReply:
        code = self._lines[0][0]
        texts = [text for _, text in self._lines]
        self._lines = []
        status_match = _STATUS_RE.match(texts[-1])
        status = status_match[1] if status_match else None
        if status is not None and status[0] != str(code)[0]:
            status = None  # an enhanced code of another class is no enhanced code
        if status is not None:
            texts = [_STATUS_RE.sub("", t, count=1) if _STATUS_RE.match(t) else t for t in texts]
        reply = Reply(code, tuple(texts), status)
        if not self._expect:
            raise RemoteProtocolError(f"unsolicited reply: {reply}")
        command = self._expect.popleft()
        self._on_reply(command, reply)
        return ServerReply(command, reply)

    def _on_reply(self, command: str, reply: Reply) -> None:
        if command in ("EHLO", "LHLO") and reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params.strip()
        elif command == "RCPT" and reply.code // 100 == 2:
            self._accepted_rcpts += 1
        elif command == "MAIL" or (command == "RSET" and reply.code == 250):
            self._accepted_rcpts = 0
        elif command == "STARTTLS" and reply.code == 220:
            self._tls_pending = True
            self._buf.clear()
