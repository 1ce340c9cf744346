"""The scheduler's decisions as pure functions of (envelope, results, now, queue config).

`plan` says which recipients of a message an attempt tries (and which a DELIVERBY
deadline settles without trying); `settle` takes the attempt's results and returns a
`Decision`: the recipients' new states, the notices (DSNs) to send and the log lines to
write. Nothing here mutates the envelope, reads a clock or does I/O: the queue manager
applies a decision on the event loop, the only place recipient state changes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from petrel import dsn
from petrel.config import QueueSection
from petrel.queue.envelope import Envelope, Recipient

from .outcome import Outcome, Result, failed

__all__ = ["Decision", "LogLine", "Plan", "backoff", "next_due", "plan", "settle"]


@dataclass(frozen=True, slots=True)
class LogLine:
    event: str  # "delivered" | "failed" | "deferred"
    level: int
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one attempt does with a message (recipient indexes into the envelope)."""

    attempt: list[int]  # hand these to the transports
    refused: dict[int, Result] = field(default_factory=dict)  # settled without a try
    warned: list[int] = field(default_factory=list)  # a DELIVERBY N delay notice is due


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an attempt for one message, to be applied by the manager."""

    recipients: dict[int, Recipient]  # index → the recipient's new value (changed ones)
    notices: list[tuple[str, list[int]]]  # (dsn action, recipient indexes), in send order
    log: list[LogLine]

    def apply(self, envelope: Envelope) -> None:
        """Copy the new values into the envelope's recipients (same objects, in place)."""
        for index, new in self.recipients.items():
            old = envelope.recipients[index]
            for f in _RECIPIENT_FIELDS:
                setattr(old, f, getattr(new, f))


_RECIPIENT_FIELDS = tuple(f.name for f in dataclasses.fields(Recipient))
_NOTICE_ORDER = (dsn.FAILED, dsn.DELIVERED, dsn.RELAYED)


def backoff(attempts: int, queue: QueueSection) -> float:
    """Seconds before the next try: ``min_backoff · 2^(attempts−1)``, at most ``max_backoff``."""
    doublings: int = 2 ** max(attempts - 1, 0)
    return min(queue.max_backoff, queue.min_backoff * doublings)


def next_due(envelope: Envelope) -> float | None:
    """When the message is next due: its earliest open recipient (never while held)."""
    times = [r.next_attempt for r in envelope.recipients if not r.final]
    return min(times) if times and not envelope.hold else None


def plan(envelope: Envelope, now: float, *, forced: bool = False) -> Plan:
    """The recipients due now (every open one when ``forced``: ETRN, flush).

    Past a DELIVERBY deadline (RFC 2852) an R message's due recipients fail with 5.4.7
    untried; an N message's are tried and get one delay notice.
    """
    due = [
        i
        for i, r in enumerate(envelope.recipients)
        if not r.final and (forced or r.next_attempt <= now)
    ]
    if envelope.by is None or not due:
        return Plan(due)
    seconds, mode = envelope.by
    if now < envelope.received_at + seconds:
        return Plan(due)
    if mode.startswith("R"):
        expired = failed("5.4.7", "delivery time expired (DELIVERBY)")
        return Plan([], refused=dict.fromkeys(due, expired))
    warned = [i for i in due if not envelope.recipients[i].delay_notified]
    return Plan(due, warned=warned)


def settle(
    envelope: Envelope,
    results: Mapping[int, Result],
    now: float,
    queue: QueueSection,
    *,
    warned: Sequence[int] = (),
) -> Decision:
    """Record ``results`` (recipient index → result, in the order they came).

    Delivered recipients are done; a failure, or a deferral past ``queue.lifetime``
    (then 4.4.7), fails for good; any other deferral is retried after `backoff`, never
    later than an R-mode DELIVERBY deadline. Notices: failures (always for a message
    from ``<>``: `dsn.build_notice` turns it into a double bounce or nothing), success
    when NOTIFY asks, and one delay warning per recipient once ``queue.delay_warning``
    has passed (or ``warned``: a DELIVERBY N deadline), unless it is final by now.
    """
    new: dict[int, Recipient] = {}

    def mine(index: int) -> Recipient:
        r = new.get(index)
        if r is None:
            r = new[index] = dataclasses.replace(envelope.recipients[index])
        return r

    delay: list[int] = []
    for index in warned:
        r = mine(index)
        if not r.delay_notified:
            r.status = "4.4.7"
            r.last_error = "delivery time expired (DELIVERBY, notify)"
            delay.append(index)
    notices: dict[str, list[int]] = {}
    lines: list[LogLine] = []
    age = now - envelope.received_at

    def notify(index: int, r: Recipient, action: str) -> None:
        if (envelope.sender == "" and action == dsn.FAILED) or dsn.wants_notice(r, action):
            notices.setdefault(action, []).append(index)

    for index, result in results.items():
        r = mine(index)
        r.attempts += 1
        r.last_attempt = now
        r.status = result.status
        r.diagnostic = result.diagnostic
        r.remote_mta = result.remote_mta
        if result.outcome == Outcome.DELIVERED:
            r.state = Outcome.DELIVERED.value
            r.last_error = None
            r.relayed = result.relayed
            notify(index, r, dsn.RELAYED if result.relayed else dsn.DELIVERED)
            fields = {"relay": result.remote_mta or "local", "status": result.status}
            lines.append(LogLine("delivered", logging.INFO, {"to": r.address, **fields}))
            continue
        text = result.text
        r.last_error = text
        if result.outcome == Outcome.FAILED or age >= queue.lifetime:
            r.state = Outcome.FAILED.value
            if result.outcome != Outcome.FAILED:
                r.status = "4.4.7"
                r.last_error = text = f"message expired in queue: {text}"
            notify(index, r, dsn.FAILED)
            fields = {"to": r.address, "status": r.status, "error": text}
            lines.append(LogLine("failed", logging.ERROR, fields))
            continue
        r.state = Outcome.DEFERRED.value
        next_attempt = now + backoff(r.attempts, queue)
        if envelope.by is not None and envelope.by[1].startswith("R"):
            next_attempt = min(next_attempt, envelope.received_at + envelope.by[0])
        r.next_attempt = max(next_attempt, now)
        if not r.delay_notified and age >= queue.delay_warning:
            delay.append(index)
        fields = {"to": r.address, "status": r.status, "error": text}
        lines.append(LogLine("deferred", logging.WARNING, fields))

    wanted = [(action, notices[action]) for action in _NOTICE_ORDER if action in notices]
    delayed: list[int] = []
    for index in dict.fromkeys(delay):  # each once, in order
        r = mine(index)
        if r.delay_notified or r.final:
            continue
        r.delay_notified = True  # asked for or not, a recipient is warned only once
        if dsn.wants_notice(r, dsn.DELAYED):
            delayed.append(index)
    if delayed:
        wanted.append((dsn.DELAYED, delayed))
    return Decision(new, wanted, lines)
