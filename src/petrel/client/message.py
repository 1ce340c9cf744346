"""Messages for the client side: build one from options, or complete a raw one.

``build_message`` composes a MIME message with the stdlib ``email`` package for
``petrel send``; the header helpers work on raw bytes (for ``petrel sendmail``), so
a message is never re-encoded: only whole header fields are added or removed.
"""

from __future__ import annotations

import email.utils
import mimetypes
import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

__all__ = [
    "add_missing_headers",
    "build_message",
    "header_values",
    "remove_headers",
    "split_header_block",
]

_FIELD_NAME_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")


def build_message(
    *,
    sender: str,
    recipients: Sequence[str],
    subject: str | None,
    body: str | None,
    headers: Sequence[str] = (),
    attachments: Sequence[Path] = (),
    domain: str = "localhost",
) -> bytes:
    """A complete message with Date, Message-ID, From, To and Subject (CRLF line ends).

    ``headers`` are ``"Name: value"`` strings; each one replaces a default field of
    the same name. Attachments get a type guessed from their file name.
    """
    msg = EmailMessage(policy=SMTP)
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    msg["From"] = sender
    if recipients:
        msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject if subject is not None else f"test {msg['Date']}"
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header needs 'Name: value', got {header!r}")
        del msg[name.strip()]
        msg[name.strip()] = value.strip()
    msg.set_content(body if body is not None else "This is a test mailing\n")
    for path in attachments:
        ctype, encoding = mimetypes.guess_type(path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        data = path.read_bytes()
        if maintype == "text":
            msg.add_attachment(data.decode("utf-8", "replace"), subtype=subtype, filename=path.name)
        else:
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    return msg.as_bytes()


def split_header_block(data: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, each with its continuation lines and line ends; the rest).

    The header ends at the first empty line, or at the first line that is neither a
    field nor a continuation (then that line starts the body, as in Postfix).
    """
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD_NAME_RE.match(line):
            fields.append(line)
        else:
            break
        pos = end
    return fields, data[pos:]


def _name(field: bytes) -> str:
    match = _FIELD_NAME_RE.match(field)
    return match[1].decode("ascii").lower() if match else ""


def header_values(fields: Sequence[bytes], *names: str) -> list[str]:
    """Unfolded values of every field called one of ``names`` (case-insensitive)."""
    wanted = {n.lower() for n in names}
    values = []
    for field in fields:
        if _name(field) in wanted:
            value = field.split(b":", 1)[1].decode("utf-8", "replace")
            values.append(re.sub(r"\r?\n[ \t]", " ", value).strip())
    return values


def remove_headers(fields: Sequence[bytes], *names: str) -> list[bytes]:
    wanted = {n.lower() for n in names}
    return [f for f in fields if _name(f) not in wanted]


def add_missing_headers(
    fields: list[bytes], *, sender: str, full_name: str | None, domain: str
) -> list[bytes]:
    """Append Date, Message-ID and From when the message lacks them (Postfix cleanup style)."""
    present = {_name(f) for f in fields}
    out = list(fields)
    if "date" not in present:
        out.append(f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode())
    if "message-id" not in present:
        out.append(f"Message-ID: {email.utils.make_msgid(domain=domain)}\r\n".encode())
    if "from" not in present:
        shown = email.utils.formataddr((full_name, sender)) if full_name else sender
        out.append(f"From: {shown}\r\n".encode())
    return out
