"""``petrel sendmail``: the classic local submission interface, through intake.

The message is read from stdin, its envelope is made (``-t`` takes the recipients
from To/Cc/Bcc and removes Bcc), and `Intake` completes and commits it as it does for
SMTP (Received; Date, Message-ID and From when missing, as Postfix's cleanup adds
them): the same group-committed fsync as a 250 over SMTP. A running server is poked
through the pickup pipe and delivers at once; a stopped one finds the message at its
next start (`Spool.recover`).

Exit statuses follow sysexits.h, as every sendmail does.
"""

from __future__ import annotations

import asyncio
import email.utils
import getpass
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from petrel import dsn, smtp
from petrel.config import Config
from petrel.policy import Client, Policy
from petrel.policy.aliases import open_aliases
from petrel.queue import Envelope, Spool, new_queue_id
from petrel.queue.envelope import FAILED, Recipient

from ._intake import Accepted, Intake, TooManyHops, expand_recipients
from .headers import header_values, remove_headers, split_header_block
from .pickup import Notified, PickupPoke
from .trace import LOCAL_PROTOCOL, Origin

if TYPE_CHECKING:
    from petrel.queue.pg import PgStore

__all__ = [
    "EX_DATAERR",
    "EX_NOUSER",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "LOCAL_CLIENT",
    "SendmailError",
    "SendmailOptions",
    "Submission",
    "local_submitter",
    "open_spool",
    "prepare",
    "read_message",
    "refusal_notice",
    "submit",
]

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_CANTCREAT = 73
EX_TEMPFAIL = 75

LOCAL_CLIENT = Client(ip="127.0.0.1", authenticated=True)  # local users may send anywhere


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
    mode: str = "bm"  # -bm queue a message; -bs SMTP on stdin; -bp list the queue; -q flush it
    flush_domain: str | None = None  # -qR<domain>: flush that domain only


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


@dataclass
class Submission:
    """What `prepare` made of the input: the envelope and the text intake completes."""

    envelope: Envelope
    message: bytes
    given: list[str]  # the recipients as given, for the Received field's ``for``
    default_from: str  # the From: field for a message without one
    refused: list[tuple[str, smtp.Reply]] = field(default_factory=list)  # bounced to sender


def prepare(
    message: bytes, opts: SendmailOptions, config: Config, *, user: str | None = None
) -> Submission:
    """The envelope and the text to spool (Bcc gone with ``-t``)."""
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
    if not rest.startswith(b"\r\n"):
        rest = b"\r\n" + rest  # the header needs its empty line before any body
    policy = Policy(config, open_aliases(config))
    given = [_address(r, hostname, what="recipient") for r in wanted]
    accepted: list[Accepted] = []
    refused: list[tuple[str, smtp.Reply]] = []
    for original in given:
        address = smtp.parse_path(f"<{original}>")
        assert address is not None
        finals = policy.check_rcpt(address, LOCAL_CLIENT)
        if isinstance(finals, smtp.Reply):
            refused.append((original, finals))
        else:
            accepted.append(Accepted(original, finals))
    if not accepted:  # nothing to queue, so nothing to bounce: the caller hears it now
        original, why = refused[0]
        raise SendmailError(EX_NOUSER, f"{original}: {why}")
    envelope = Envelope(
        queue_id=new_queue_id(),
        sender=sender,
        recipients=expand_recipients(accepted),
        received_at=time.time(),
        body="8BITMIME" if any(b > 127 for b in message) else "7BIT",
        smtputf8=not all(a.isascii() for a in [sender, *given]),
        protocol=LOCAL_PROTOCOL,
        client_ip="127.0.0.1",
        client_helo="localhost",
        auth_user=user,
    )
    shown = sender or f"MAILER-DAEMON@{hostname}"
    if opts.full_name:
        shown = email.utils.formataddr((opts.full_name, shown))
    return Submission(envelope, b"".join(fields) + rest, given, shown, refused)


def refusal_notice(submission: Submission, policy: Policy) -> dsn.Notice | None:
    """The failure notice to the sender about the refused recipients (None: none due).

    Postfix's sendmail queues every recipient and its local(8) bounces an unknown user
    to the sender; Petrel checks at submission, so the notice is made here at once.
    """
    if not submission.refused:
        return None
    now = time.time()
    failed = []
    for address, why in submission.refused:
        failed.append(
            Recipient(
                address,
                state=FAILED,
                last_error=str(why),
                status=why.status or "5.0.0",
                diagnostic=f"x-petrel; {why}",
                last_attempt=now,
            )
        )
    return dsn.build_notice(
        hostname=policy.hostname,
        original=submission.envelope,
        recipients=failed,
        action=dsn.FAILED,
        message=submission.message,
        now=now,
        route=policy.notice_recipients,
    )


def open_spool(config: Config) -> Spool | PgStore:
    """The queue store: the spool under ``data_dir``, made if missing, or the shared
    PostgreSQL queue; SendmailError (73, or 75 for a database out of reach) if not."""
    data_dir = config.server.data_dir
    if config.queue.backend == "postgresql":
        from petrel.queue.pg import SchemaError, open_store

        try:
            return open_store(config)
        except (OSError, SchemaError) as exc:
            raise SendmailError(EX_TEMPFAIL, f"cannot open the queue: {exc}") from None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(data_dir / "queue")
        spool.open()
    except OSError as exc:
        message = f"cannot open the spool under {data_dir}: {exc}"
        raise SendmailError(EX_CANTCREAT, message) from None
    return spool


def local_submitter(store: Spool | PgStore) -> Notified:
    """What tells the server about mail committed here: the pickup pipe of a spool; a
    shared queue's commit NOTIFYs the nodes itself."""
    return PickupPoke(store.root) if isinstance(store, Spool) else Notified()


def submit(
    submission: Submission, config: Config, *, user: str | None = None, uid: int | None = None
) -> str:
    """Commit through intake (durably: returns after the sync) and poke a running server.

    ``user`` and ``uid`` name the submitter in the Received field (default: this
    process's), for a caller that switched to the owner of data_dir first.
    """
    spool = open_spool(config)
    origin = Origin(
        LOCAL_PROTOCOL,
        local_user=user or getpass.getuser(),
        uid=os.getuid() if uid is None else uid,
    )
    intake = Intake(config, spool, local_submitter(spool))
    envelope = submission.envelope
    try:
        asyncio.run(
            intake.put(
                envelope,
                submission.message,
                origin,
                given=submission.given,
                fix_header=True,
                default_from=submission.default_from,
                sign=True,
                via="sendmail",
            )
        )
        notice = refusal_notice(submission, Policy(config, open_aliases(config)))
        if notice is not None:
            asyncio.run(intake.put(notice.envelope, notice.message, None, via="notice"))
    except TooManyHops as exc:
        raise SendmailError(EX_DATAERR, f"mail loop: {exc}") from None
    except OSError as exc:
        raise SendmailError(EX_TEMPFAIL, f"cannot queue the message: {exc}") from None
    finally:
        spool.close()
    return envelope.queue_id
