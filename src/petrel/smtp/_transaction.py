"""``ClientTransaction``: one mail transaction, client side, without I/O.

Given a ``ClientConnection`` that has said EHLO (so the server's extensions are known),
the envelope (``MailFrom``, ``RcptTo``…) and the message text, it builds the MAIL and
RCPT parameters the server offers, produces the command bytes in order — MAIL, RCPT…
and DATA in one group when pipelining (RFC 2920), one at a time otherwise — and turns
the replies into one ``RcptOutcome`` per recipient: the MAIL reply if MAIL was refused,
else the RCPT reply if that was refused, else the DATA reply if DATA was refused, else
the reply to the text (LMTP, RFC 2033: each accepted recipient's own reply).

The driver owns the sockets and runs one loop::

    txn = ClientTransaction(conn, MailFrom(sender, size=n), [RcptTo(a), RcptTo(b)], text)
    while not txn.done:
        wire = b"".join(txn.commands())
        if txn.text_due:
            wire += txn.send_text()
        if wire:
            write(wire)
        if not txn.done:
            txn.receive(read_one_reply())

Bytes are made (and registered with the connection) only when the driver asks for
them, so a driver may stop between two steps (``petrel send --quit-after``). A 354
after every RCPT was refused (a pipelined DATA to a server that does not refuse it)
is answered with an empty text, which ends the DATA without delivering anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ._client import ClientConnection, ServerReply
from ._errors import LocalProtocolError
from ._params import encode_xtext
from ._replies import Reply

# Stage names, as in "(in reply to RCPT TO command)" and Postfix's diagnostics.
MAIL_STAGE = "MAIL FROM"
RCPT_STAGE = "RCPT TO"
DATA_STAGE = "DATA"
END_STAGE = "end of DATA"


@dataclass(frozen=True, slots=True)
class MailFrom:
    """What MAIL FROM should say; each parameter goes out only if the server offers it."""

    sender: str  # without brackets; "" for the null sender
    size: int | None = None  # SIZE= (RFC 1870)
    body: str | None = None  # BODY=8BITMIME or BINARYMIME (RFC 6152/3030); None: no BODY=
    smtputf8: bool = False  # SMTPUTF8 (RFC 6531)
    ret: str | None = None  # RET=FULL|HDRS (RFC 3461)
    envid: str | None = None  # ENVID=, xtext-encoded here
    by: tuple[int, str] | None = None  # BY=<seconds>;<mode> (RFC 2852)


@dataclass(frozen=True, slots=True)
class RcptTo:
    """What one RCPT TO should say; NOTIFY and ORCPT only to a server offering DSN."""

    address: str
    notify: tuple[str, ...] = ()  # ("SUCCESS", "FAILURE") or ("NEVER",)
    orcpt: str | None = None  # "rfc822;addr", the address part xtext-encoded here


@dataclass(frozen=True, slots=True)
class RcptOutcome:
    """What became of one recipient: the reply that decided it and the stage it answered."""

    recipient: RcptTo
    reply: Reply
    stage: str  # MAIL_STAGE | RCPT_STAGE | DATA_STAGE | END_STAGE

    @property
    def ok(self) -> bool:
        """Delivered (a 2xx to the text), or accepted so far when the transaction stopped."""
        return self.reply.code // 100 == 2


class ClientTransaction:
    """MAIL, RCPT…, DATA or BDAT and the text, for one message on one connection."""

    def __init__(
        self,
        conn: ClientConnection,
        mail: MailFrom,
        recipients: Sequence[RcptTo],
        message: bytes = b"",
        *,
        pipelining: bool = True,
        bdat: bool = False,
        stop_after: str | None = None,
    ) -> None:
        """``pipelining``: pipeline if the server offers PIPELINING. ``bdat``: send the
        text as one ``BDAT LAST`` chunk (RFC 3030) instead of DATA. ``stop_after``:
        ``"MAIL"`` or ``"RCPT"`` to stop there (a probe; no DATA is sent)."""
        if stop_after not in (None, "MAIL", "RCPT"):
            raise ValueError(f"stop_after must be MAIL, RCPT or None, not {stop_after!r}")
        self.conn = conn
        self.mail = mail
        self.recipients = tuple(recipients)
        self.message = message
        self.pipelining = pipelining and conn.supports("PIPELINING")
        self.bdat = bdat
        self.stop_after = stop_after
        # (keyword, what) for every parameter left out because the server lacks it
        self.dropped: list[tuple[str, str]] = []
        self.mail_argument = self._mail_argument()
        self.rcpt_arguments = [self._rcpt_argument(r) for r in self.recipients]
        self.outcomes: list[RcptOutcome | None] = [None] * len(self.recipients)
        self.mail_reply: Reply | None = None
        self.data_reply: Reply | None = None
        self.text_sent = False  # the message itself went out (to accepted recipients)
        self._text_ended = False  # a text went out, the message or the empty one
        self._accepted: list[int] = []  # indexes of recipients whose RCPT got a 2xx
        self._expected: deque[tuple[str, int]] = deque()  # (stage, recipient index)
        self._next: tuple[str, int] | None = ("MAIL", 0)  # the next step to take
        self._ends = 0  # replies to the text received

    # -- parameters ---------------------------------------------------------------------

    def _offered(self, keyword: str, what: str) -> bool:
        if self.conn.supports(keyword):
            return True
        self.dropped.append((keyword, what))
        return False

    def _mail_argument(self) -> str:
        mail = self.mail
        parts = [f"FROM:<{mail.sender}>"]
        if mail.size is not None and self._offered("SIZE", "SIZE="):
            parts.append(f"SIZE={mail.size}")
        if mail.body and self._offered("8BITMIME", f"BODY={mail.body}"):
            parts.append(f"BODY={mail.body}")
        if mail.smtputf8 and self._offered("SMTPUTF8", "SMTPUTF8"):
            parts.append("SMTPUTF8")
        if (mail.ret or mail.envid) and self._offered("DSN", "RET/ENVID"):
            if mail.ret:
                parts.append(f"RET={mail.ret}")
            if mail.envid:
                parts.append(f"ENVID={encode_xtext(mail.envid)}")
        if mail.by is not None and self._offered("DELIVERBY", "BY="):
            parts.append(f"BY={mail.by[0]};{mail.by[1]}")
        if any(r.notify for r in self.recipients):
            self._offered("DSN", "NOTIFY")
        if any(r.orcpt for r in self.recipients):
            self._offered("DSN", "ORCPT")
        return " ".join(parts)

    def _rcpt_argument(self, recipient: RcptTo) -> str:
        parts = [f"TO:<{recipient.address}>"]
        if self.conn.supports("DSN"):
            if recipient.notify:
                parts.append("NOTIFY=" + ",".join(recipient.notify))
            if recipient.orcpt:
                kind, _, addr = recipient.orcpt.partition(";")
                parts.append(f"ORCPT={kind};{encode_xtext(addr)}")
        return " ".join(parts)

    # -- what to send -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Nothing left to send and no reply outstanding."""
        return self._next is None and not self._expected

    @property
    def text_due(self) -> bool:
        """The message text (or the empty text after a stray 354) is to be sent now."""
        return self._next is not None and self._next[0] == "TEXT"

    @property
    def accepted(self) -> list[int]:
        """Indexes of the recipients whose RCPT was accepted."""
        return list(self._accepted)

    @property
    def needs_reset(self) -> bool:
        """Whether RSET should follow before another MAIL on this connection: the
        transaction did not end with a text after an accepted MAIL (a refused MAIL,
        every RCPT refused, DATA refused, or stopped early)."""
        mail_ok = self.mail_reply is not None and _ok(self.mail_reply)
        return not (mail_ok and self._text_ended)

    def commands(self) -> list[bytes]:
        """The command lines due now, in order (empty while replies are awaited)."""
        step = self._next
        if step is None or step[0] == "TEXT":
            return []
        self._next = None
        if step[0] == "MAIL":
            out = [self._send("MAIL", self.mail_argument, MAIL_STAGE, 0)]
            if self.pipelining and self.stop_after != "MAIL":
                out += [
                    self._send("RCPT", arg, RCPT_STAGE, i)
                    for i, arg in enumerate(self.rcpt_arguments)
                ]
                if self.stop_after is None and not self.bdat and self.recipients:
                    out.append(self._send("DATA", "", DATA_STAGE, 0))
            return out
        if step[0] == "RCPT":
            return [self._send("RCPT", self.rcpt_arguments[step[1]], RCPT_STAGE, step[1])]
        return [self._send("DATA", "", DATA_STAGE, 0)]

    def _send(self, verb: str, argument: str, stage: str, index: int) -> bytes:
        wire = self.conn.send_command(verb, argument)
        self._expected.append((stage, index))
        return wire

    def send_text(self) -> bytes:
        """The message as DATA text (dot-stuffed) or one BDAT LAST chunk.

        After a 354 that came though every recipient was refused, the text is empty:
        it only ends the DATA, and its reply decides nothing.
        """
        if not self.text_due:
            raise LocalProtocolError("the message text is not due now")
        self._next = None
        self.text_sent = bool(self._accepted)
        self._text_ended = True
        if self.bdat:
            wire = self.conn.send_bdat(self.message, last=True)
        else:
            wire = self.conn.send_data(self.message if self._accepted else b"")
        # SMTP: one reply for the text; LMTP: one per accepted recipient (at least one).
        replies = max(len(self._accepted), 1) if self.conn.lmtp else 1
        self._expected.extend((END_STAGE, n) for n in range(replies))
        return wire

    # -- replies --------------------------------------------------------------------------

    @property
    def replies_due(self) -> int:
        """How many replies to what was sent are still outstanding."""
        return len(self._expected)

    @property
    def expected_stage(self) -> str | None:
        """The stage of the next reply awaited (MAIL_STAGE, RCPT_STAGE, …), if any."""
        return self._expected[0][0] if self._expected else None

    def receive(self, event: ServerReply) -> None:
        """One reply to this transaction's commands, in the order they were sent."""
        if not self._expected:
            raise LocalProtocolError(f"no reply is due to the transaction: {event.reply}")
        stage, index = self._expected.popleft()
        if (event.command == "END" or event.command == "BDAT") != (stage == END_STAGE) or (
            stage != END_STAGE and event.command != stage.split()[0]
        ):
            raise LocalProtocolError(f"a reply to {event.command} where {stage} was due")
        reply = event.reply
        if stage == MAIL_STAGE:
            self._on_mail(reply)
        elif stage == RCPT_STAGE:
            self._on_rcpt(index, reply)
        elif stage == DATA_STAGE:
            self._on_data(reply)
        else:
            self._on_end(reply)

    def _settle(self, indexes: Sequence[int], reply: Reply, stage: str) -> None:
        for i in indexes:
            self.outcomes[i] = RcptOutcome(self.recipients[i], reply, stage)

    def _on_mail(self, reply: Reply) -> None:
        self.mail_reply = reply
        if not _ok(reply):
            self._settle(range(len(self.recipients)), reply, MAIL_STAGE)
            return  # pipelined: the RCPT and DATA replies still come, and change nothing
        if self.stop_after == "MAIL" or self.pipelining:
            return
        self._after_rcpt(-1)

    def _on_rcpt(self, index: int, reply: Reply) -> None:
        assert self.mail_reply is not None
        if _ok(self.mail_reply):
            if _ok(reply):
                self._accepted.append(index)
            self._settle([index], reply, RCPT_STAGE)
        if not self.pipelining or (self.bdat and index == len(self.recipients) - 1):
            self._after_rcpt(index)

    def _after_rcpt(self, index: int) -> None:
        """Unpipelined (or BDAT): the next RCPT, or DATA/BDAT once all are answered."""
        assert self.mail_reply is not None
        if not _ok(self.mail_reply):
            return
        if index + 1 < len(self.recipients):
            if not self.pipelining:
                self._next = ("RCPT", index + 1)
        elif self.stop_after is None and self._accepted:
            self._next = ("TEXT", 0) if self.bdat else ("DATA", 0)

    def _on_data(self, reply: Reply) -> None:
        self.data_reply = reply
        if reply.code == 354:
            self._next = ("TEXT", 0)  # an empty text if nobody was accepted
        else:
            self._settle(self._accepted, reply, DATA_STAGE)

    def _on_end(self, reply: Reply) -> None:
        if not self.text_sent:
            return  # the empty text after a stray 354: its reply decides nothing
        n = self._ends
        self._ends += 1
        if self.conn.lmtp:
            if n < len(self._accepted):
                self._settle([self._accepted[n]], reply, END_STAGE)
        else:
            self._settle(self._accepted, reply, END_STAGE)


def _ok(reply: Reply) -> bool:
    return reply.code // 100 == 2
