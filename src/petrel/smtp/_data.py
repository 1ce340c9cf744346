"""Message-text framing: DATA (RFC 5321 §4.1.1.4, §4.5.2) and BDAT (RFC 3030).

DATA text is scanned in bulk with ``bytes.find``/``count``/``replace`` — never byte by
byte — and handed on in chunks cut at line ends, so dot-unstuffing and the line checks
each see whole lines. Only ``<CRLF>.<CRLF>`` ends the text; a bare CR or LF anywhere
spoils the message (SMTP smuggling defence, CVE-2023-51764 family) but does *not* end
it, so a smuggled ``\\n.\\n`` can never become the start of a second message.

With ``normalize`` (``[policy] bare_lf = "normalize"``, Postfix 3.9's
``smtpd_forbid_bare_newline = normalize``) a bare LF ends a text line and is stored as
CRLF; a bare CR still spoils the message. The end is still only ``<CRLF>.<CRLF>`` in
the bytes received: a "." line next to a bare LF (``\\n.\\n``, ``\\n.\\r\\n``,
``\\r\\n.\\n``) is text and is stored as a "." line, which a relay dot-stuffs again.
Chunks without a bare LF pay nothing for this.
"""

from __future__ import annotations

import re

from ._replies import (
    BARE_NEWLINE_IN_DATA,
    MESSAGE_TOO_BIG,
    NUL_IN_DATA,
    TEXT_LINE_TOO_LONG,
    Reply,
)

# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including the CRLF.
MAX_TEXT_LINE = 998
_END = b"\r\n.\r\n"
# Unstuffing of normalized text: a line's leading dot goes unless the line is just "."
# (RFC 5321 §4.5.2); such a line was reached through a bare LF and is text.
_STUFFED = re.compile(rb"^\.(?!\r\n)", re.MULTILINE)


class DataReader:
    """Consumes DATA text from a buffer; yields unstuffed chunks and then the verdict."""

    __slots__ = ("_at_crlf", "_limit", "_normalize", "_size", "error")

    def __init__(self, size_limit: int, *, normalize: bool = False, at_crlf: bool = True) -> None:
        self._limit = size_limit
        self._size = 0
        self.error: Reply | None = None
        self._normalize = normalize
        # Normalize mode: did the bytes so far end with a real CRLF? Only then can a
        # ".CRLF" line end the text. ``at_crlf`` tells it of the DATA command line.
        self._at_crlf = at_crlf

    @property
    def size(self) -> int:
        return self._size

    def feed(self, buf: bytearray) -> tuple[bytes | None, bool]:
        """Take what can be taken from the start of ``buf`` (which starts at a line start).

        Returns ``(chunk, finished)``: ``chunk`` is unstuffed text to pass on (None when
        nothing is ready or the message is already spoiled), ``finished`` tells that the
        terminating ``.CRLF`` line was consumed; it never comes with a chunk, so the
        caller can hand out every chunk before the end. Bytes after the terminator stay
        in ``buf`` — they are the next pipelined command.
        """
        if buf.startswith(b".\r\n") and self._at_crlf:
            del buf[:3]
            return None, True
        end = buf.find(_END)
        if end >= 0:
            # Take the text up to the terminator's first CRLF; the ".\r\n" left at the
            # start of ``buf`` finishes the message on the next call.
            cut = end + 2
        elif self._normalize:
            cut = buf.rfind(b"\n") + 1  # a bare LF ends a line too
        else:
            crlf = buf.rfind(b"\r\n")
            cut = crlf + 2 if crlf >= 0 else 0
        if cut == 0:  # no complete line yet
            # The transparency dot does not count (RFC 5321 §4.5.3.1.6).
            limit = MAX_TEXT_LINE + 1 + buf.startswith(b".")
            if len(buf) > limit and self.error is None:
                self.error = TEXT_LINE_TOO_LONG
            if self.error is not None and len(buf) > 4:
                # Spoiled: keep only what could still begin a line end.
                keep = len(buf) - 4
                self._size += keep
                del buf[:keep]
                if self._normalize:
                    self._at_crlf = False  # what is left starts inside a line
            return None, False
        chunk = bytes(buf[:cut])
        del buf[:cut]
        after_crlf = self._at_crlf
        if self._normalize:
            self._at_crlf = chunk.endswith(b"\r\n")
        return self._check(chunk, after_crlf), False

    def _check(self, chunk: bytes, after_crlf: bool) -> bytes | None:
        """Validate whole lines and dot-unstuff them (RFC 5321 §4.5.2)."""
        if self.error is not None:
            return None
        crlf = chunk.count(b"\r\n")
        bare_lf = chunk.count(b"\n") != crlf
        if self._normalize and (bare_lf or (not after_crlf and chunk.startswith(b".\r\n"))):
            return self._normalized(chunk, crlf)
        if bare_lf or chunk.count(b"\r") != crlf:
            self.error = BARE_NEWLINE_IN_DATA
        elif b"\0" in chunk:
            self.error = NUL_IN_DATA
        if self.error is not None:
            return None
        if b"\r\n." in chunk or chunk.startswith(b"."):
            chunk = (b"\r\n" + chunk).replace(b"\r\n.", b"\r\n")[2:]
        return self._measured(chunk)

    def _measured(self, chunk: bytes) -> bytes | None:
        """Line length and message size of unstuffed text (the transparency dot does not
        count, RFC 5321 §4.5.3.1.6); None once either is over its limit."""
        if len(chunk) > MAX_TEXT_LINE + 2 and _has_long_line(chunk):
            self.error = TEXT_LINE_TOO_LONG
            return None
        self._size += len(chunk)
        if self._size > self._limit:
            self.error = MESSAGE_TOO_BIG
            return None
        return chunk

    def _normalized(self, chunk: bytes, crlf: int) -> bytes | None:
        """``_check`` for text with a bare LF: CRLF for each, "." lines stay text.

        Also for a chunk that starts with a "." line after a bare LF: it is not the end.
        """
        if chunk.count(b"\r") != crlf:
            self.error = BARE_NEWLINE_IN_DATA  # a bare CR is refused in every mode
            return None
        if b"\0" in chunk:
            self.error = NUL_IN_DATA
            return None
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return self._measured(_STUFFED.sub(b"", chunk))


def _has_long_line(chunk: bytes) -> bool:
    """Does a line of ``chunk`` (whole CRLF-ended lines) exceed MAX_TEXT_LINE octets?

    Every window of MAX_TEXT_LINE + 2 octets that starts a line must hold a CRLF; the
    scan jumps to the last one in each window, so it takes about one step per KB
    instead of one object per line.
    """
    window = MAX_TEXT_LINE + 2
    start, end = 0, len(chunk)
    while end - start > window:
        crlf = chunk.rfind(b"\r\n", start, start + window)
        if crlf < 0:
            return True
        start = crlf + 2
    return False


class ChunkReader:
    """Consumes exactly ``length`` octets of BDAT data; no framing, no unstuffing."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def feed(self, buf: bytearray) -> bytes:
        take = min(self.remaining, len(buf))
        chunk = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        return chunk
