"""What one delivery attempt did for one recipient: the type every transport returns.

Maildir, LMTP and SMTP all answer in `Result` s, and the outcome words are spelled only
here (after the recipient states of `petrel.queue.envelope`, which they become).
`Transport` is the shape of a transport (chasquid's courier, Postfix's local(8) and
smtp(8) behind qmgr): given a route and its jobs it returns, per job, one result per
recipient, and never raises for anything a mailbox or a peer does.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from petrel.queue import envelope as _states
from petrel.queue.envelope import Envelope, Recipient

__all__ = [
    "Job",
    "Outcome",
    "Result",
    "Route",
    "Transport",
    "deferred",
    "delivered",
    "failed",
    "local_error",
]


class Outcome(enum.StrEnum):
    """The three outcomes; each value is the recipient state it leads to."""

    DELIVERED = _states.DELIVERED
    DEFERRED = _states.DEFERRED
    FAILED = _states.FAILED


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one recipient in one attempt (enough to write its DSN fields)."""

    outcome: Outcome
    status: str  # RFC 3463, e.g. "5.1.1"
    text: str  # one line for logs and last_error
    diagnostic: str | None = None  # "smtp; 550 5.1.1 ..." (RFC 3464 Diagnostic-Code)
    remote_mta: str | None = None  # "dns; mx.example.org"
    relayed: bool = False  # handed to a peer that did not offer DSN (RFC 3461 §6.2.2)


def delivered(status: str, text: str) -> Result:
    return Result(Outcome.DELIVERED, status, text)


def deferred(status: str, text: str, remote_mta: str | None = None) -> Result:
    return Result(Outcome.DEFERRED, status, text, None, remote_mta)


def failed(status: str, text: str, remote_mta: str | None = None) -> Result:
    return Result(Outcome.FAILED, status, text, None, remote_mta)


def local_error(error: Exception | str) -> Result:
    """ValueError never heals (unsafe mailbox name, corrupt file): fail; the rest defers."""
    if isinstance(error, ValueError):
        return Result(Outcome.FAILED, "5.1.1", str(error), f"x-local; {error}")
    return Result(Outcome.DEFERRED, "4.3.0", str(error), f"x-local; {error}")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a recipient's mail goes; ``key`` groups recipients into sessions."""

    kind: str  # "local" | "mx" | "smarthost" | "lmtp"
    target: str  # "maildir" (local), the domain (mx), "host:port" (smarthost), the LMTP target

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.target}"


@dataclass(slots=True)
class Job:
    """One message for one route: its envelope, the recipients to try, maybe the body.

    ``body`` is None when the transport reads the text from the queue store itself.
    ``maybe_done``: the message was recovered after a crash, so an earlier attempt may
    have finished unrecorded (Maildir looks for its own file before writing again).
    """

    envelope: Envelope
    recipients: list[Recipient]
    body: bytes | None = None
    maybe_done: bool = False


class Transport(Protocol):
    """Delivers the jobs of one route: per job, one `Result` per recipient, in order."""

    async def deliver(self, route: Route, jobs: Sequence[Job]) -> list[list[Result]]: ...
