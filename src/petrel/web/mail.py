"""Mailbox messages for the API: ids, summaries and parts, read with the stdlib parser.

A message id is the base64url (no padding) of ``domain/user/unique``, the Maildir it is
in and its unique name there. It is opaque to clients, and decoding it validates every
part strictly (`delivery.maildir` refuses unsafe names again), so no id reaches a file
outside the Maildirs. Reading and parsing are blocking: `Mailstore` runs them in a
thread.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.policy
import email.utils
import re
from collections import OrderedDict
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from petrel.delivery import maildir

__all__ = ["Mailstore", "MessageRef", "decode_id", "encode_id"]

_ID = re.compile(r"[A-Za-z0-9_-]{4,600}")
_HEADER_BYTES = 64 * 1024  # what a summary reads of each file
_CACHE = 20_000  # summaries kept (Maildir files never change once in new/ or cur/)
_POLICY = email.policy.default


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where a message lives: ``user@domain`` and its Maildir unique name."""

    domain: str
    user: str
    unique: str

    @property
    def mailbox(self) -> str:
        return f"{self.user}@{self.domain}"


def encode_id(ref: MessageRef) -> str:
    raw = f"{ref.domain}/{ref.user}/{ref.unique}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_id(text: str) -> MessageRef | None:
    """The message an id names, or None for anything that is not a well-formed id."""
    if not _ID.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = raw.split("/")
    if len(parts) != 3 or not maildir.is_unique_name(parts[2]):
        return None
    try:
        maildir.mailbox_path(Path("/"), parts[0], parts[1])
    except ValueError:
        return None
    if parts[0] != parts[0].lower() or parts[1] != parts[1].lower():
        return None
    return MessageRef(parts[0], parts[1], parts[2])


def split_mailbox(address: str) -> tuple[str, str] | None:
    """(domain, user) of a mailbox address, or None when it cannot name one."""
    user, at, domain = address.lower().rpartition("@")
    if not at:
        return None
    try:
        maildir.mailbox_path(Path("/"), domain, user)
    except ValueError:
        return None
    return domain, user


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError):  # a header the parser cannot make sense of
        return ""
    return "" if value is None else str(value)


def _date(message: EmailMessage) -> str | None:
    """The Date: field as ISO 8601, or None when absent or unreadable."""
    text = _header(message, "Date")
    try:
        parsed = email.utils.parsedate_to_datetime(text) if text else None
    except (TypeError, ValueError):
        return None
    return parsed.isoformat() if parsed is not None else None


def _received(stored: maildir.StoredMessage) -> str:
    """When the message reached the Maildir (its name's leading seconds), ISO 8601 UTC."""
    seconds = stored.order[0]
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def _addresses(message: EmailMessage, *names: str) -> list[str]:
    found: list[str] = []
    for name in names:
        for _, address in email.utils.getaddresses([_header(message, name)]):
            if address:
                found.append(address)
    return found


def _text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown charset, broken encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


class Mailstore:
    """The mailboxes under ``<data_dir>/mailboxes`` as the API shows them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._summaries: OrderedDict[tuple[str, str, str, str], dict[str, Any]] = OrderedDict()

    def mailboxes(self) -> list[dict[str, Any]]:
        return [
            {"address": b.address, "messages": b.messages, "unseen": b.unseen}
            for b in maildir.list_mailboxes(self.root)
        ]

    def messages(self, domain: str, user: str) -> list[dict[str, Any]]:
        """Every message's summary, newest first; FileNotFoundError: no such mailbox."""
        out = []
        for stored in maildir.list_messages(self.root, domain, user):
            try:
                out.append(self._summary(domain, user, stored))
            except FileNotFoundError:  # deleted meanwhile
                continue
        return out

    def _summary(self, domain: str, user: str, stored: maildir.StoredMessage) -> dict[str, Any]:
        key = (domain, user, stored.sub, stored.name)
        cached = self._summaries.get(key)
        if cached is None:
            head = maildir.read_message(self.root, domain, user, stored.unique, _HEADER_BYTES)
            end = head.find(b"\n\n")
            parsed = BytesParser(policy=_POLICY).parsebytes(
                head[: end + 2] if end >= 0 else head, headersonly=True
            )
            assert isinstance(parsed, EmailMessage)
            cached = {
                "id": encode_id(MessageRef(domain, user, stored.unique)),
                "mailbox": f"{user}@{domain}",
                "from": _header(parsed, "From"),
                "to": _addresses(parsed, "To", "Cc") or _addresses(parsed, "Delivered-To"),
                "subject": _header(parsed, "Subject"),
                "date": _date(parsed),
                "received": _received(stored),
                "size": self._size(domain, user, stored),
            }
            self._summaries[key] = cached
            if len(self._summaries) > _CACHE:
                self._summaries.popitem(last=False)
        return {**cached, "seen": stored.seen}

    def _size(self, domain: str, user: str, stored: maildir.StoredMessage) -> int:
        found = re.search(r",S=(\d+)", stored.name)
        if found:
            return int(found[1])
        return len(maildir.read_message(self.root, domain, user, stored.unique))

    def raw(self, ref: MessageRef) -> bytes:
        return maildir.read_message(self.root, ref.domain, ref.user, ref.unique)

    def parsed(self, ref: MessageRef) -> EmailMessage:
        message = BytesParser(policy=_POLICY).parsebytes(self.raw(ref))
        assert isinstance(message, EmailMessage)
        return message

    def message(self, ref: MessageRef) -> dict[str, Any]:
        """The summary plus headers, text and HTML parts and the attachments' list."""
        stored = next(
            (
                m
                for m in maildir.list_messages(self.root, ref.domain, ref.user)
                if m.unique == ref.unique
            ),
            None,
        )
        if stored is None:
            raise FileNotFoundError(ref.unique)
        summary = self._summary(ref.domain, ref.user, stored)
        message = self.parsed(ref)
        text_part = message.get_body(("plain",))
        html_part = message.get_body(("html",))
        return {
            **summary,
            "headers": [[name, str(value)] for name, value in _safe_items(message)],
            "text": _text(text_part) if isinstance(text_part, EmailMessage) else None,
            "html": _text(html_part) if isinstance(html_part, EmailMessage) else None,
            "attachments": [
                {
                    "index": index,
                    "filename": part.get_filename() or f"attachment-{index}",
                    "content_type": part.get_content_type(),
                    "size": len(part.get_payload(decode=True) or b""),
                }
                for index, part in enumerate(_attachments(message))
            ],
        }

    def attachment(self, ref: MessageRef, index: int) -> tuple[str, str, bytes] | None:
        """(filename, content type, bytes) of attachment ``index``, or None."""
        parts = _attachments(self.parsed(ref))
        if not 0 <= index < len(parts):
            return None
        part = parts[index]
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        return part.get_filename() or f"attachment-{index}", part.get_content_type(), data

    def html(self, ref: MessageRef) -> str | None:
        part = self.parsed(ref).get_body(("html",))
        return _text(part) if isinstance(part, EmailMessage) else None

    def delete(self, ref: MessageRef) -> None:
        maildir.delete_message(self.root, ref.domain, ref.user, ref.unique)

    def mark_seen(self, ref: MessageRef) -> bool:
        return maildir.mark_seen(self.root, ref.domain, ref.user, ref.unique)


def _safe_items(message: EmailMessage) -> list[tuple[str, str]]:
    items = []
    for name, value in message.raw_items():
        try:
            items.append((name, str(message.policy.header_fetch_parse(name, value))))
        except (ValueError, IndexError, TypeError):
            items.append((name, str(value)))
    return items


def _attachments(message: EmailMessage) -> list[EmailMessage]:
    return [p for p in message.iter_attachments() if isinstance(p, EmailMessage)]
