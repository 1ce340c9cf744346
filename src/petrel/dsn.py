"""Delivery status notifications (RFC 3461/3464/6522): the bounce, delay and success mail.

A notice is an ordinary message from the null sender ``<>`` put into the spool like
any other, so it is delivered (or retried) by the same machinery. Three rules keep
notices from looping, as in Postfix's bounce(8):

- a message from ``<>`` never gets a notice of its own;
- when such a message fails for good, a *double bounce* goes to the postmaster;
- when a double bounce fails, it is only logged.

What comes back with a failure notice (choice documented in docs/architecture.md):
``RET=FULL`` or no RET → the whole message (headers only above ``FULL_LIMIT``, as
Postfix's ``bounce_size_limit``); ``RET=HDRS`` → headers. Delay, success and "relayed"
notices always carry the headers only (RFC 3461 §4.3 ties RET to failures).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.ids import new_queue_id

__all__ = ["FULL_LIMIT", "Notice", "build_notice", "wants_notice"]

FULL_LIMIT = 100_000  # octets of original message returned in full; above: headers only

FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
RELAYED = "relayed"

_SUBJECTS = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delayed Mail (still being retried)",
    DELIVERED: "Successful Mail Delivery Report",
    RELAYED: "Mail Delivery Status Report (relayed)",
}
_INTRO = {
    FAILED: "I'm sorry to have to inform you that your message could not\n"
    "be delivered to one or more recipients. It's attached below.",
    DELAYED: "Your message could not be delivered yet to one or more recipients.\n"
    "It will be retried until it is {lifetime} old; you need not send it again.",
    DELIVERED: "Your message was successfully delivered to the destination(s)\nlisted below.",
    RELAYED: "Your message was handed on to a server that does not send delivery\n"
    "notifications; no further notices will come for the recipient(s) below.",
}


@dataclass(frozen=True, slots=True)
class Notice:
    """A notice ready for the spool: its envelope and its bytes (CRLF)."""

    envelope: Envelope
    message: bytes


def wants_notice(recipient: Recipient, action: str) -> bool:
    """RFC 3461 §4.1 NOTIFY: absent means FAILURE (and DELAY: Petrel warns on delay too)."""
    notify = recipient.notify
    if notify is None:
        return action in (FAILED, DELAYED)
    if "NEVER" in notify:
        return False
    wanted = {FAILED: "FAILURE", DELAYED: "DELAY", DELIVERED: "SUCCESS", RELAYED: "SUCCESS"}
    return wanted.get(action) in notify


def _date(when: float) -> str:
    return email.utils.formatdate(when, localtime=False, usegmt=True)


def _headers_of(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def build_notice(
    *,
    hostname: str,
    original: Envelope,
    recipients: Sequence[Recipient],
    action: str,
    message: bytes,
    now: float | None = None,
    lifetime: float | None = None,
    route: Callable[[str], list[str]] | None = None,
) -> Notice | None:
    """The notice about ``recipients`` of ``original``, or None when none may be sent.

    ``route`` gives the envelope recipients for the address the notice is to
    (`Policy.notice_recipients`: a local address without a mailbox means the
    postmaster); the To: field keeps that address.
    """
    now = time.time() if now is None else now
    double = False
    if original.sender == "":
        if action != FAILED or original.notice == "double-bounce":
            return None  # never a notice about a notice; a failed double bounce is only logged
        double = True
        to = f"postmaster@{hostname}"
    else:
        to = original.sender
    queue_id = new_queue_id()
    boundary = f"{queue_id}.{int(now)}/{hostname}"
    subject = _SUBJECTS[action]
    if double:
        subject = "Undeliverable notice returned to postmaster (double bounce)"
    intro = _INTRO[action].format(lifetime=_human(lifetime or 0))
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        intro,
        "",
        "                   The mail system",
        "",
    ]
    for r in recipients:
        detail = r.last_error or r.status or action
        lines.append(f"<{r.address}>: {detail}")
    human = "\r\n".join(lines) + "\r\n"

    per_message = [f"Reporting-MTA: dns; {hostname}"]
    if original.envid:
        per_message.append(f"Original-Envelope-Id: {original.envid}")
    per_message.append(f"X-Petrel-Queue-ID: {original.queue_id}")
    per_message.append(f"X-Petrel-Sender: rfc822; {original.sender}")
    per_message.append(f"Arrival-Date: {_date(original.received_at)}")
    blocks = ["\r\n".join(per_message)]
    for r in recipients:
        block = []
        if r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            block.append(f"Original-Recipient: {kind}; {addr}")
        block.append(f"Final-Recipient: {_address_type(r.address)}; {r.address}")
        block.append(f"Action: {action}")
        default_status = {FAILED: "5.0.0", DELAYED: "4.0.0"}.get(action, "2.0.0")
        block.append(f"Status: {r.status or default_status}")
        if r.remote_mta:
            block.append(f"Remote-MTA: {r.remote_mta}")
        if r.diagnostic:
            block.append(f"Diagnostic-Code: {r.diagnostic}")
        block.append(f"Last-Attempt-Date: {_date(r.last_attempt or now)}")
        if action == DELAYED and lifetime:
            block.append(f"Will-Retry-Until: {_date(original.received_at + lifetime)}")
        blocks.append("\r\n".join(block))
    status_part = "\r\n\r\n".join(blocks) + "\r\n"

    full = action == FAILED and original.ret != "HDRS" and len(message) <= FULL_LIMIT
    if full:
        original_part = b"Content-Type: message/rfc822\r\n\r\n" + message
    else:
        original_part = b"Content-Type: text/rfc822-headers\r\n\r\n" + _headers_of(message)
    if not original_part.endswith(b"\r\n"):
        original_part += b"\r\n"

    header = "\r\n".join(
        [
            f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
            f"To: <{to}>",
            f"Subject: {subject}",
            f"Date: {_date(now)}",
            f"Message-ID: <{queue_id}.{action}@{hostname}>",
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            "Content-Type: multipart/report; report-type=delivery-status;",
            f'\tboundary="{boundary}"',
            "Content-Transfer-Encoding: 8bit",
        ]
    )
    body = b"".join(
        [
            header.encode(),
            b"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n",
            f"--{boundary}\r\n".encode(),
            b"Content-Description: Notification\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
            human.encode("utf-8"),
            f"\r\n--{boundary}\r\n".encode(),
            b"Content-Description: Delivery report\r\n",
            b"Content-Type: message/delivery-status\r\n\r\n",
            status_part.encode("utf-8"),
            f"\r\n--{boundary}\r\n".encode(),
            b"Content-Description: Undelivered Message\r\n" if full else b"",
            original_part,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    finals = route(to) if route is not None else [to]
    eight_bit = not body.isascii()
    envelope = Envelope(
        queue_id=queue_id,
        sender="",
        recipients=[Recipient(final, notify=("NEVER",)) for final in finals],
        received_at=now,
        body="8BITMIME" if eight_bit else "7BIT",
        smtputf8=original.smtputf8 and not all(f.isascii() for f in [to, *finals]),
        size=len(body),
        client_ip="",
        client_helo=hostname,
        protocol="local",
        notice="double-bounce" if double else "dsn",
    )
    return Notice(envelope, body)


def _human(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"
