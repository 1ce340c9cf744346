"""``ClientConnection``: the client side of SMTP and LMTP as a sans-IO state machine.

The application asks for command bytes (``send_command``, ``send_data``, ``send_bdat``),
writes them, feeds what the server says into ``receive_data`` and pulls ``next_event``
for each ``ServerReply`` — matched, in order, to the command it answers, so pipelined
commands (RFC 2920) need no bookkeeping by the caller. LMTP (RFC 2033) is the same
with one reply per accepted recipient after the message text.

Like the server side it keeps sequence rules in tables (``_client_state.py``): a
command sent out of order (DATA before MAIL, MAIL inside a transaction, anything but
the text after a 354) raises ``LocalProtocolError`` before a byte is produced. With
pipelining the rules apply to what was *sent*; replies that are already in refine them.
``ClientTransaction`` (``_transaction.py``) drives one mail transaction over it.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from ._client_state import OUT_OF_ORDER, REPLY_MOVES, SEND, WAITS, ClientState
from ._errors import LocalProtocolError, RemoteProtocolError
from ._replies import Reply
from ._util import NEED_DATA

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
    raw: tuple[str, ...] = ()  # the reply lines as received, for transcripts


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


# Every verb some row of SEND knows; other (extension) verbs are allowed where NOOP is.
_KNOWN = frozenset(verb for row in SEND.values() for verb in row)


@dataclass(slots=True)
class _Sent:
    """A command whose reply is outstanding, with what its reply needs to know."""

    verb: str
    state: ClientState  # the state sending it produced
    prior: ClientState  # the state it was sent in
    transaction: int  # which mail transaction it belongs to


class ClientConnection:
    """One SMTP (or LMTP) session, client side."""

    def __init__(self, *, lmtp: bool = False) -> None:
        self.lmtp = lmtp
        self.extensions: dict[str, str] = {}  # EHLO/LHLO keywords (upper-case) → parameters
        self.state = ClientState.CONNECTED
        self._buf = bytearray()
        self._lines: list[tuple[int, str]] = []
        self._raw: list[str] = []
        self._expect: deque[_Sent] = deque(
            [_Sent("CONNECT", ClientState.CONNECTED, ClientState.CONNECTED, 0)]
        )
        self._auth_prior = ClientState.GREETED  # where AUTH's final reply returns to
        # The current mail transaction, as far as its replies are in.
        self._transaction = 0  # counts MAIL commands sent
        self._mail_refused = False
        self._rcpts_sent = 0
        self._rcpt_replies = 0
        self._accepted_rcpts = 0  # LMTP: replies owed after the message text

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
        return tuple(sent.verb for sent in self._expect)

    # -- sequence rules ----------------------------------------------------------------------

    def _move(self, key: str, what: str) -> tuple[ClientState, ClientState]:
        """Check that ``key`` may be sent now; move the state. Returns (before, after)."""
        row = SEND[self.state]
        if key not in row and key.partition(" ")[0] not in _KNOWN and "NOOP" in row:
            key = "NOOP"  # an extension command: allowed where NOOP is, state unchanged
        if key not in row:
            why = "it needs a 354 reply to DATA" if key == "TEXT" else OUT_OF_ORDER[self.state]
            raise LocalProtocolError(f"{what} out of order: {why}")
        if (
            key in ("DATA", "BDAT", "BDAT LAST")
            and self._rcpt_replies == self._rcpts_sent
            and self._accepted_rcpts == 0
        ):
            raise LocalProtocolError(f"{what} out of order: every RCPT was refused")
        if key == "BDAT LAST" and self.lmtp and self._rcpt_replies < self._rcpts_sent:
            # RFC 2033: one reply per accepted recipient, so their number must be known.
            raise LocalProtocolError("LMTP: BDAT LAST before every RCPT reply is in")
        before = self.state
        after = row[key]
        if after is not None:
            self.state = after
        if key == "MAIL":
            self._transaction += 1
            self._mail_refused = False
            self._rcpts_sent = self._rcpt_replies = self._accepted_rcpts = 0
        elif key == "RCPT":
            self._rcpts_sent += 1
        elif key == "AUTH":
            self._auth_prior = before
        return before, self.state

    def _expect_reply(self, verb: str, before: ClientState) -> None:
        prior = self._auth_prior if verb == "AUTH" else before
        self._expect.append(_Sent(verb, self.state, prior, self._transaction))

    # -- output ------------------------------------------------------------------------------

    def send_command(self, verb: str, argument: str = "") -> bytes:
        """The bytes of one command line; its reply will come as a ``ServerReply``.

        Raises ``LocalProtocolError`` for a command out of order (see ``_client_state``).
        """
        verb = verb.upper()
        line = f"{verb} {argument}" if argument else verb
        if "\r" in line or "\n" in line:
            raise LocalProtocolError(f"line break inside a command: {line!r}")
        before, _ = self._move(verb, verb)
        self._expect_reply(verb, before)
        return line.encode("utf-8") + b"\r\n"

    def send_auth_response(self, line: str) -> bytes:
        """One SASL line after a ``334`` (base64, or ``*`` to cancel; RFC 4954 §4).

        Unlike a command it is sent as given (base64 is case-sensitive); its reply
        comes as a ``ServerReply`` for ``"AUTH"``.
        """
        if "\r" in line or "\n" in line:
            raise LocalProtocolError("line break inside a SASL response")
        before, _ = self._move("SASL", "a SASL response")
        self._expect_reply("AUTH", before)
        return line.encode("ascii") + b"\r\n"

    def send_data(self, message: bytes) -> bytes:
        """The message text after a 354: dot-stuffed and terminated."""
        before, _ = self._move("TEXT", "the message text")
        for _ in range(self._replies_for_end()):
            self._expect_reply("END", before)
        return dot_stuff(message)

    def send_bdat(self, chunk: bytes, *, last: bool) -> bytes:
        """One CHUNKING command with its octets (RFC 3030)."""
        before, _ = self._move("BDAT LAST" if last else "BDAT", "BDAT")
        for _ in range(self._replies_for_end() if last else 1):
            self._expect_reply("BDAT", before)
        return f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk

    def _replies_for_end(self) -> int:
        """After the text: one reply, or in LMTP one per accepted recipient (RFC 2033 §4.2)."""
        count = max(self._accepted_rcpts, 1) if self.lmtp else 1
        self._accepted_rcpts = 0
        return count

    def tls_established(self) -> None:
        """The handshake after ``220`` to STARTTLS is done: EHLO again (RFC 3207 §4.2)."""
        if self.state is not ClientState.TLS:
            raise LocalProtocolError("tls_established() without a 220 to STARTTLS")
        self.state = ClientState.GREETED
        self.extensions = {}

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is ClientState.TLS:
            return  # bytes before the handshake are a response-injection attempt; drop them
        self._buf += data

    def next_event(self) -> ServerReply | type[NEED_DATA]:
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
            self._raw.append(raw.decode("utf-8", "replace"))
            if len(self._lines) > MAX_REPLY_LINES:
                raise RemoteProtocolError("too many lines in one reply")
            if match[2] == b"-":
                continue
            return self._finish_reply()

    def _finish_reply(self) -> ServerReply:
        code = self._lines[0][0]
        texts = [text for _, text in self._lines]
        raw = tuple(self._raw)
        self._lines = []
        self._raw = []
        status_match = _STATUS_RE.match(texts[-1])
        status = status_match[1] if status_match else None
        if status is not None and status[0] != str(code)[0]:
            status = None  # an enhanced code of another class is no enhanced code
        if status is not None:
            texts = [_STATUS_RE.sub("", t, count=1) if _STATUS_RE.match(t) else t for t in texts]
        reply = Reply(code, tuple(texts), status)
        if not self._expect:
            raise RemoteProtocolError(f"unsolicited reply: {reply}")
        sent = self._expect.popleft()
        self._on_reply(sent, reply)
        return ServerReply(sent.verb, reply, raw)

    def _on_reply(self, sent: _Sent, reply: Reply) -> None:
        command, success = sent.verb, reply.code // 100 == 2
        if command in ("EHLO", "LHLO") and reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params.strip()
        current = sent.transaction == self._transaction
        if command == "RCPT" and current:
            self._rcpt_replies += 1
            self._accepted_rcpts += success
        elif command == "MAIL" and current and not success:
            self._mail_refused = True
            if self.state in (ClientState.MAIL, ClientState.RCPT):
                self.state = ClientState.READY  # the server has no transaction to end
        if command in WAITS and self.state is sent.state:  # nothing was sent after it
            if (command, reply.code // 100) in REPLY_MOVES:
                moved = REPLY_MOVES[(command, reply.code // 100)]
                self.state = sent.prior if moved is None else moved
            if self.state is ClientState.RCPT and self._mail_refused:
                self.state = ClientState.READY  # DATA refused after a refused MAIL
        if command == "STARTTLS" and reply.code == 220 and self.state is ClientState.TLS:
            self._buf.clear()
