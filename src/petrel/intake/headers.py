"""The header section of a message as it streams in, and whole-field edits on raw bytes.

A message is never re-encoded: fields are only counted, added or removed whole. The scan
stops at the blank line that ends the header section, or after `HEADER_SCAN` octets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from petrel.mailauth.results import claims
from petrel.queue import HEADER_SCAN

__all__ = [
    "HeaderSection",
    "header_values",
    "remove_forged_results",
    "remove_headers",
    "split_header_block",
]

_FIELD_NAME_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")


class HeaderSection:
    """Collects the header section from the chunks of a message (CRLF line ends)."""

    __slots__ = ("_head", "done")

    def __init__(self) -> None:
        self._head = bytearray()
        self.done = False  # the blank line was seen, or the scan limit reached

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        head = self._head
        start = max(len(head) - 3, 0)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if head.startswith(b"\r\n"):  # no header fields at all
            head.clear()
            self.done = True
        elif end >= 0:
            del head[end + 2 :]
            self.done = True
        elif len(head) > HEADER_SCAN:
            del head[HEADER_SCAN:]
            self.done = True

    @property
    def received_fields(self) -> int:
        """Received fields so far: the hop count of RFC 5321 §6.3 loop detection."""
        head = bytes(self._head).lower()
        return head.count(b"\nreceived:") + head.startswith(b"received:")

    def field_names(self) -> set[bytes]:
        """The lower-cased names of the fields seen (continuation lines skipped)."""
        return {
            line.split(b":", 1)[0].strip().lower()
            for line in bytes(self._head).split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t") and b":" in line
        }


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


def remove_forged_results(text: bytes, hostname: str) -> bytes:
    """``text`` without the Authentication-Results fields that claim to be ours
    (RFC 8601 §5: only Petrel may write those); everything else byte for byte."""
    if b"authentication-results" not in text[:HEADER_SCAN].lower():
        return text
    fields, rest = split_header_block(text)
    kept = [
        f
        for f in fields
        if _name(f) != "authentication-results"
        or not claims(f.split(b":", 1)[1].decode("utf-8", "replace"), hostname)
    ]
    return text if len(kept) == len(fields) else b"".join(kept) + rest
