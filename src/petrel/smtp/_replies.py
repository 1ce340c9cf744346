"""Replies: the one value type the application hands back to the core.

Formatting follows RFC 5321 §4.2 (multi-line replies: ``code-text`` on every line but
the last, ``code SP text`` on the last) and RFC 2034 (the enhanced status code of
RFC 3463 repeated at the start of every line's text).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply; ``lines`` holds the text of each line, ``status`` the RFC 3463 code."""

    code: int
    lines: tuple[str, ...]
    status: str | None = None

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise LocalProtocolError(f"reply code out of range: {self.code}")
        if not self.lines:
            raise LocalProtocolError("a reply needs at least one line of text")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise LocalProtocolError(f"reply text contains a line break: {line!r}")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def to_bytes(self) -> bytes:
        prefix = f"{self.status} " if self.status else ""
        last = len(self.lines) - 1
        out = [
            f"{self.code}{' ' if i == last else '-'}{prefix}{line}\r\n"
            for i, line in enumerate(self.lines)
        ]
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8").rstrip("\r\n").replace("\r\n", " / ")


def reply(code: int, status: str | None, *lines: str) -> Reply:
    """Short constructor: ``reply(250, "2.1.0", "Sender ok")``."""
    return Reply(code, lines, status)


# Replies the core itself produces. The wire texts of DESIGN.md live here too, so that
# the server, tests and the client share one spelling of each.


def greeting(hostname: str, date: str) -> Reply:
    return reply(220, None, f"{hostname} ESMTP Petrel; {date}")


def sender_ok(address: str) -> Reply:
    return reply(250, "2.1.0", f"<{address}>... Sender ok")


def recipient_ok(address: str) -> Reply:
    return reply(250, "2.1.5", f"<{address}>... Recipient ok")


START_DATA = reply(354, None, 'Enter mail, end with "." on a line by itself')


def message_accepted(queue_id: str) -> Reply:
    return reply(250, "2.0.0", f"{queue_id} Message accepted for delivery")


def closing(hostname: str) -> Reply:
    return reply(221, "2.0.0", f"{hostname} closing connection")


def chunk_received(size: int) -> Reply:
    return reply(250, "2.0.0", f"{size} octets received")


OK = reply(250, "2.0.0", "OK")
RESET = reply(250, "2.0.0", "Reset state")
VERBOSE = reply(250, "2.0.0", "Verbose mode")
READY_FOR_TLS = reply(220, "2.0.0", "Ready to start TLS")

HELO_NEEDS_DOMAIN = reply(501, "5.0.0", "HELO requires domain address")
EHLO_NEEDS_DOMAIN = reply(501, "5.0.0", "EHLO requires domain address")
UNRECOGNIZED = reply(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = reply(500, "5.5.2", "Line too long")
BARE_NEWLINE = reply(500, "5.5.2", "Bare CR or LF in command line; lines must end in CRLF")
NUL_IN_COMMAND = reply(500, "5.5.2", "NUL character in command line")
BAD_UTF8 = reply(500, "5.5.2", "Command line is not valid UTF-8")
SEND_HELO_FIRST = reply(503, "5.5.1", "Polite people say HELO first")
NESTED_MAIL = reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_MAIL_BEFORE_DATA = reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = reply(503, "5.5.1", "Need RCPT (recipient)")
NO_VALID_RECIPIENTS = reply(554, "5.5.1", "Error: no valid recipients")
IN_TRANSACTION = reply(503, "5.5.1", "Mail transaction in progress")
BDAT_IN_PROGRESS = reply(503, "5.5.1", "BDAT transfer in progress; only BDAT, RSET or QUIT")
BINARYMIME_NEEDS_BDAT = reply(503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA")
TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TEXT_LINE_TOO_LONG = reply(
    500, "5.5.2", "Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6); rejected"
)
BARE_NEWLINE_IN_DATA = reply(
    550, "5.6.0", "Message contains a bare CR or LF (lines must end in CRLF); rejected"
)
NUL_IN_DATA = reply(550, "5.6.0", "Message contains a NUL character; rejected")
NOT_IMPLEMENTED = reply(502, "5.5.1", "Command not implemented")
AUTH_NOT_ENABLED = reply(503, "5.5.1", "Error: authentication not enabled")
ALREADY_AUTHENTICATED = reply(503, "5.5.1", "Already authenticated")
# The seeds' text for success (RFC 4954 suggests "2.7.0 Authentication successful";
# Sendmail's wording is kept so the classic sessions replay byte for byte).
AUTH_OK = reply(235, "2.0.0", "OK Authenticated")
AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_NEEDS_TLS = reply(  # RFC 4954's text, and what to do about it (someone at a telnet)
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism;"
    " use STARTTLS first, or the submissions port (implicit TLS)",
)
AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")
UNKNOWN_MECHANISM = reply(504, "5.5.4", "Unrecognized authentication type")
TLS_ACTIVE = reply(503, "5.5.1", "TLS already active")
TLS_NOT_AVAILABLE = reply(502, "5.5.1", "STARTTLS not available")
NON_ASCII_NEEDS_SMTPUTF8 = reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")


def too_many_errors(hostname: str) -> Reply:
    return reply(421, "4.7.0", f"{hostname} Too many errors, closing connection")


def syntax(status: str, text: str) -> Reply:
    return reply(501, status, text)


MAX_ECHO = 100


def echo(text: str) -> str:
    """Client-supplied text made fit for a reply line: control characters masked and
    long text cut, so the line stays within 512 octets (RFC 5321 §4.5.3.1.5)."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 3] + "..."
