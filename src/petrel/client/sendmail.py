"""``petrel sendmail``: the classic local submission interface, straight into the spool.

The message is read from stdin, completed the way Postfix's pickup/cleanup do
(Received, Date, Message-ID, From; Bcc removed with ``-t``), and committed with
`Spool.begin`/`write`/`commit`: the same group-committed fsync as a 250 over SMTP.
A running server is poked through the pickup pipe and delivers at once; a stopped
one finds the message at its next start (`Spool.recover`).

Exit statuses follow sysexits.h, as every sendmail does.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import getpass
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from petrel import smtp
from petrel.client.message import (
    add_missing_headers,
    header_values,
    remove_headers,
    split_header_block,
)
from petrel.config import Config
from petrel.delivery.pickup import LOCAL_PROTOCOL, notify_pickup
from petrel.policy import Client, Policy
from petrel.policy.aliases import Aliases
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.ids import new_queue_id
from petrel.queue.spool import Spool

__all__ = [
    "EX_DATAERR",
    "EX_NOUSER",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "SendmailError",
    "SendmailOptions",
    "prepare",
    "read_message",
    "submit",
]

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75

_LOCAL = Client(ip="127.0.0.1", authenticated=True)  # local users may send anywhere


class SendmailError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SendmailOptions:
    recipients: list[str] = field(default_factory=list)
    extract: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F


def read_message(stream: BinaryIO, *, ignore_dots: bool) -> bytes:
    """stdin → message bytes with CRLF line ends and a final CRLF; 8-bit kept.

    Without ``ignore_dots`` a line holding a single ``.`` ends the input, as in
    sendmail(1). Bare LF and bare CR become CRLF, as on the SMTP wire.
    """
    data = stream.read()
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not ignore_dots:
        if data.startswith(b".\n") or data == b".":
            data = b""
        else:
            cut = data.find(b"\n.\n")
            if cut >= 0:
                data = data[: cut + 1]
            elif data.endswith(b"\n."):
                data = data[:-1]
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data.replace(b"\n", b"\r\n")


def _address(text: str, hostname: str, *, what: str) -> str:
    """A bare ``user`` gets ``@hostname`` (myorigin); the result must parse as a path."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if text and "@" not in text:
        text = f"{text}@{hostname}"
    try:
        path = smtp.parse_path(f"<{text}>")
    except smtp.AddressError as exc:
        raise SendmailError(EX_DATAERR, f"bad {what} address {text!r}: {exc}") from None
    return "" if path is None else str(path)


def _received(user: str, hostname: str, queue_id: str, recipients: Sequence[str]) -> bytes:
    """A Received field in the spirit of Postfix's pickup: who ran us, our local id."""
    lines = [
        f"Received: from local user {user} (uid {os.getuid()})",
        f"\tby {hostname} (Petrel) with {LOCAL_PROTOCOL} id {queue_id}",
    ]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>")
    lines[-1] += f"; {email.utils.formatdate(localtime=True)}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def prepare(
    message: bytes, opts: SendmailOptions, config: Config, *, user: str | None = None
) -> tuple[Envelope, bytes]:
    """The envelope and the bytes to spool: Received first, Bcc gone, missing fields added."""
    hostname = config.server.hostname
    user = user or getpass.getuser()
    sender = (
        ""
        if opts.sender in ("<>", "")
        else _address(opts.sender if opts.sender is not None else user, hostname, what="sender")
    )
    fields, rest = split_header_block(message)
    wanted = list(opts.recipients)
    if opts.extract:
        found = email.utils.getaddresses(header_values(fields, "to", "cc", "bcc"))
        wanted += [addr for _, addr in found if addr]
        fields = remove_headers(fields, "bcc")
    if not wanted:
        raise SendmailError(EX_USAGE, "no recipients given" + (" or found" if opts.extract else ""))
    fields = add_missing_headers(
        fields, sender=sender or f"MAILER-DAEMON@{hostname}", full_name=opts.full_name,
        domain=hostname,
    )  # fmt: skip
    if not rest.startswith(b"\r\n"):
        rest = b"\r\n" + rest  # the header needs its empty line before any body
    policy = Policy(config, Aliases.load(config.aliases.file))
    given = [_address(r, hostname, what="recipient") for r in wanted]
    recipients: list[Recipient] = []
    seen: set[str] = set()
    for original in given:
        address = smtp.parse_path(f"<{original}>")
        assert address is not None
        finals = policy.resolve_recipient(address, _LOCAL)
        if isinstance(finals, smtp.Reply):
            raise SendmailError(EX_NOUSER, f"{original}: {' '.join(finals.lines)}")
        for final in finals:
            if final.lower() in seen:
                continue
            seen.add(final.lower())
            orcpt = f"rfc822;{original}" if final.lower() != original.lower() else None
            recipients.append(Recipient(final, orcpt=orcpt))
    envelope = Envelope(
        queue_id=new_queue_id(),
        sender=sender,
        recipients=recipients,
        received_at=time.time(),
        body="8BITMIME" if any(b > 127 for b in message) else "7BIT",
        smtputf8=not all(a.isascii() for a in [sender, *given]),
        protocol=LOCAL_PROTOCOL,
        client_ip="127.0.0.1",
        client_helo="localhost",
        auth_user=user,
    )
    body = b"".join(fields) + rest
    return envelope, body


def submit(envelope: Envelope, body: bytes, config: Config, *, user: str | None = None) -> str:
    """Commit to the spool (durably: returns after the sync) and poke a running server."""
    data_dir = config.server.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(data_dir / "queue")
        spool.open()
    except OSError as exc:
        message = f"cannot open the spool under {data_dir}: {exc}"
        raise SendmailError(EX_CANTCREAT, message) from None
    try:
        writer = spool.begin(envelope)
        recipients = [r.address for r in envelope.recipients]
        try:
            who = user or getpass.getuser()
            writer.write(_received(who, config.server.hostname, writer.queue_id, recipients))
            writer.write(body)
        except OSError:
            writer.abort()
            raise
        asyncio.run(spool.commit(writer))
    except OSError as exc:
        raise SendmailError(EX_TEMPFAIL, f"cannot queue the message: {exc}") from None
    finally:
        spool.close()
    # If the poke fails, the server's periodic scan (or its next start) finds the message.
    with contextlib.suppress(OSError):
        notify_pickup(spool.root, envelope.queue_id)
    return envelope.queue_id
