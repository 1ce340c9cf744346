"""Queue ids: short, filename-safe, roughly time-sortable, unique across processes.

An id is 11 characters of the microsecond clock in Crockford base32 (fixed width,
so string order is time order) followed by 3 random characters. Within one
process the clock part never repeats or goes backwards; across processes the
random part makes a clash unlikely, and the spool's O_EXCL create catches the rest.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

__all__ = ["is_valid_queue_id", "new_queue_id"]

# Crockford's alphabet is in ASCII order, which is what keeps ids sortable.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CLOCK_CHARS = 11  # 55 bits of microseconds: good until the year 3111
_RANDOM_CHARS = 3
_ID_RE = re.compile(f"[{_ALPHABET}]{{{_CLOCK_CHARS + _RANDOM_CHARS}}}")

_lock = threading.Lock()
_last_usec = 0


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_queue_id() -> str:
    """Return a fresh 14-character queue id such as ``0PBQ7N3A1C2D5X``."""
    global _last_usec
    with _lock:
        usec = max(time.time_ns() // 1000, _last_usec + 1)
        _last_usec = usec
    return _encode(usec, _CLOCK_CHARS) + _encode(secrets.randbits(5 * _RANDOM_CHARS), _RANDOM_CHARS)


def is_valid_queue_id(text: str) -> bool:
    """True if `text` is shaped like a queue id, so it is safe to use as a file name."""
    return _ID_RE.fullmatch(text) is not None
