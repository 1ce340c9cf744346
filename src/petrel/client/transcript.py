"""The conversation as people write it down: ``S: 220 …`` / ``C: EHLO …``.

Colour follows the terminal: only on a TTY, and never when ``NO_COLOR`` is set.
Comments (what a base64 line decodes to, TLS turns) are dim; a password never
reaches this module unmasked.
"""

from __future__ import annotations

import os
from typing import TextIO

__all__ = ["Transcript", "use_colour"]

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_CODE_COLOURS = {"2": "\x1b[32m", "3": "\x1b[36m", "4": "\x1b[33m", "5": "\x1b[31m"}
_NOTE = "\x1b[35m"


def use_colour(stream: TextIO) -> bool:
    """True on a terminal without ``NO_COLOR`` (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Transcript:
    """Writes transcript lines to ``stream``; ``enabled`` False swallows them all."""

    def __init__(self, stream: TextIO, *, enabled: bool = True, colour: bool = False) -> None:
        self.stream = stream
        self.enabled = enabled
        self.colour = colour

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _paint(self, style: str, text: str) -> str:
        return f"{style}{text}{_RESET}" if self.colour else text

    def server(self, line: str, comment: str | None = None) -> None:
        style = _CODE_COLOURS.get(line[:1], "")
        self._write(self._paint(style, f"S: {line}") + self._comment(comment))

    def client(self, line: str, comment: str | None = None) -> None:
        self._write(self._paint(_BOLD, f"C: {line}") + self._comment(comment))

    def note(self, text: str) -> None:
        """A turn that is not a protocol line: connecting, TLS, warnings."""
        self._write(self._paint(_NOTE, f"*** {text}"))

    def dim(self, text: str) -> None:
        self._write(self._paint(_DIM, text))

    def _comment(self, comment: str | None) -> str:
        if comment is None:
            return ""
        return "   " + self._paint(_DIM, f"# {comment}")
