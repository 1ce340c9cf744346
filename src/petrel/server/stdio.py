"""``petrel sendmail -bs``: one SMTP session on stdin/stdout, as Postfix's and Sendmail's.

The client is a local user, trusted as ``petrel sendmail`` trusts one: any sender,
any recipient (the policy still refuses unknown local users), no STARTTLS, no AUTH.
The sans-IO core reads the commands; this loop answers them synchronously (asking
`Policy`) and streams the text of each message into an `Intake` draft, committed as the
SMTP session and ``petrel sendmail`` commit theirs (durably, then a poke of a running
server). The caller opens the spool and gives the `Intake` and `Policy` (``cli/sendmail.py``).

Command lines ending in a bare LF are read as CRLF lines (a script's ``printf 'EHLO
x\\n'``), as the server does with ``bare_lf = "normalize"``; as there, only CRLF.CRLF
ends the text of DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import BinaryIO

from petrel import smtp
from petrel.config import Config
from petrel.intake import (
    LOCAL_PROTOCOL,
    Accepted,
    Draft,
    Intake,
    Origin,
    TooManyHops,
    new_envelope,
    rfc5322_date,
)
from petrel.intake.local import LOCAL_CLIENT
from petrel.policy import Policy
from petrel.queue import Envelope

__all__ = ["serve_stdio"]

_READ_SIZE = 65536
_NO_STORAGE = smtp.reply(452, "4.3.1", "Insufficient system storage, try again later")
_TOO_MANY_HOPS = smtp.reply(554, "5.4.6", "Too many hops (Received header fields); mail loop?")
_r = smtp.replies


class _Transaction:
    __slots__ = ("draft", "params", "recipients", "sender", "storage_failed")

    def __init__(self, sender: str, params: smtp.MailParams) -> None:
        self.sender = sender
        self.params = params
        self.recipients: list[Accepted] = []
        self.draft: Draft | None = None
        self.storage_failed = False


class _StdioSession:
    """Answers the core's events; `run` is the read–answer–write loop."""

    def __init__(
        self, config: Config, intake: Intake, policy: Policy, user: str, uid: int, out: BinaryIO
    ) -> None:
        self.config = config
        self.hostname = config.server.hostname
        self.intake = intake
        self.policy = policy
        self.user = user
        self.uid = uid
        self.out = out
        limits = config.limits
        self.conn = smtp.ServerConnection(
            self.hostname,
            extensions=smtp.Extensions(size=limits.message_size, etrn=False),
            max_recipients=limits.recipients,
            max_errors=limits.errors,
            max_junk=limits.junk_commands,
            strict_paths=config.policy.strict_paths,
            normalize_bare_lf=True,
        )
        self.txn: _Transaction | None = None

    async def run(self, infd: int) -> None:
        self._write(self.conn.send(_r.greeting(self.hostname, rfc5322_date())))
        conn = self.conn
        while conn.state is not smtp.State.CLOSED:
            data = os.read(infd, _READ_SIZE)
            conn.receive_data(data)  # b"": end of input, the core says ConnectionClosed
            while (event := conn.next_event()) is not smtp.NEED_DATA:
                if event is smtp.PAUSED:  # closed (QUIT, too many errors)
                    break
                assert isinstance(event, smtp.Event)
                answer = await self._handle(event)
                if answer is not None:
                    self._write(conn.send(answer))
        self._abort_message()

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    async def _handle(self, event: smtp.Event) -> smtp.Reply | None:
        match event:
            case smtp.DataChunk(data):
                self._on_chunk(data)
                return None
            case smtp.Rcpt():
                return self._on_rcpt(event)
            case smtp.Mail(sender, params):
                self._abort_message()
                address = "" if sender is None else str(sender)
                self.txn = _Transaction(address, params)
                return _r.sender_ok(address)
            case smtp.Data():
                return _r.START_DATA if self._start_message() is not None else _NO_STORAGE
            case smtp.ChunkReceived(size):
                if self._start_message() is None:
                    self.txn = None
                    return _NO_STORAGE
                return _r.chunk_received(size)
            case smtp.EndOfData():
                return await self._on_end()
            case smtp.Ehlo(domain):
                self._reset()
                return self.conn.ehlo_reply(f"{self.hostname} Hello {domain}")
            case smtp.Helo(domain):
                self._reset()
                return smtp.Reply(250, (f"{self.hostname} Hello {domain}",))
            case smtp.Rset():
                self._reset()
                return _r.RESET
            case smtp.Noop():
                return _r.OK
            case smtp.Quit():
                self._reset()
                return _r.closing(self.hostname)
            case smtp.MessageRejected(reply) | smtp.BadCommand(reply):
                if isinstance(event, smtp.MessageRejected):
                    self._reset()
                return reply
            case smtp.Vrfy(argument):
                return self.policy.vrfy(argument, LOCAL_CLIENT)
            case smtp.Expn(argument):
                return self.policy.expn(argument, LOCAL_CLIENT)
            case smtp.Help(topic):
                return smtp.help_reply(topic)
            case smtp.Verb():
                return _r.VERBOSE
            case smtp.ConnectionClosed():
                self._reset()
                return None
        # AUTH, STARTTLS and ETRN are not offered: the core refuses them on its own
        return _r.NOT_IMPLEMENTED if event.needs_reply else None

    def _on_rcpt(self, event: smtp.Rcpt) -> smtp.Reply:
        assert self.txn is not None
        resolved = self.policy.check_rcpt(event.recipient, LOCAL_CLIENT)
        if isinstance(resolved, smtp.Reply):
            return resolved
        original = self.policy.canonical(event.recipient)
        params = event.params
        self.txn.recipients.append(Accepted(original, resolved, params.orcpt, params.notify))
        return _r.recipient_ok(str(event.recipient))

    def _on_chunk(self, data: bytes) -> None:
        draft = self._start_message()
        if draft is None:
            return
        try:
            draft.write(data)
        except OSError:  # a full spool disk: refuse the message at its end
            self._storage_failed()

    async def _on_end(self) -> smtp.Reply:
        draft = self._start_message()
        self.txn = None
        if draft is None:
            return _NO_STORAGE
        try:
            await self.intake.commit(draft, via="sendmail -bs")
        except TooManyHops:
            return _TOO_MANY_HOPS
        except OSError:
            return _NO_STORAGE
        return _r.message_accepted(draft.envelope.queue_id)

    def _start_message(self) -> Draft | None:
        txn = self.txn
        assert txn is not None
        if txn.storage_failed:
            return None
        if txn.draft is None:
            sender = txn.sender
            try:
                txn.draft = self.intake.begin(
                    self._envelope(txn),
                    Origin(LOCAL_PROTOCOL, local_user=self.user, uid=self.uid),
                    given=[r.given for r in txn.recipients],
                    fix_header=True,
                    default_from=sender or f"MAILER-DAEMON@{self.hostname}",
                    sign=True,  # a local user's mail, as from `petrel sendmail`
                )
            except OSError:
                self._storage_failed()
                return None
        return txn.draft

    def _envelope(self, txn: _Transaction) -> Envelope:
        return new_envelope(
            txn.sender,
            txn.params,
            txn.recipients,
            protocol=LOCAL_PROTOCOL,
            client_ip="127.0.0.1",
            client_helo=self.conn.helo or "",
            auth_user=self.user,
        )

    def _storage_failed(self) -> None:
        self._abort_message()
        assert self.txn is not None
        self.txn.storage_failed = True

    def _abort_message(self) -> None:
        txn = self.txn
        if txn is not None and txn.draft is not None:
            txn.draft.abort()
            txn.draft = None

    def _reset(self) -> None:
        self._abort_message()
        self.txn = None


def serve_stdio(
    config: Config,
    intake: Intake,
    policy: Policy,
    *,
    user: str,
    uid: int,
    infd: int,
    out: BinaryIO,
) -> None:
    """Run one SMTP session reading ``infd`` and writing ``out`` until QUIT or EOF.

    ``user`` and ``uid`` name the submitter (Received field, envelope auth_user).
    """
    session = _StdioSession(config, intake, policy, user, uid, out)
    with contextlib.suppress(BrokenPipeError):  # the client left without QUIT: as at EOF
        asyncio.run(session.run(infd))
