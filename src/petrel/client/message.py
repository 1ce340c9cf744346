"""The message ``petrel send`` composes from its options (stdlib ``email``)."""

from __future__ import annotations

import email.utils
import mimetypes
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

__all__ = ["build_message"]


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
