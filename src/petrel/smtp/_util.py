"""h11's sentinel pattern: values that are classes, so a type checker can narrow on them.

``NEED_DATA`` and ``PAUSED`` are classes whose metaclass is `Sentinel`. Being classes,
each has its own type (``type[NEED_DATA]``), and being final, ``if event is NEED_DATA``
narrows both branches: ``next_event() -> Event | type[NEED_DATA] | type[PAUSED]``.
"""

from __future__ import annotations

from typing import Any, final

__all__ = ["NEED_DATA", "PAUSED", "Sentinel"]


class Sentinel(type):
    """The metaclass of sentinel values: ``class NAME(Sentinel, metaclass=Sentinel)``."""

    def __new__(
        cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwds: Any
    ) -> Sentinel:
        assert bases == (Sentinel,), "a sentinel is declared as NAME(Sentinel, metaclass=Sentinel)"
        return super().__new__(cls, name, bases, namespace, **kwds)

    def __repr__(cls) -> str:
        return cls.__name__


@final
class NEED_DATA(Sentinel, metaclass=Sentinel):
    """No complete command (or reply) in the buffer: call ``receive_data`` first."""


@final
class PAUSED(Sentinel, metaclass=Sentinel):
    """The last event still waits for its reply (or TLS for its handshake)."""
