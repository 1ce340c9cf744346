"""`LiveAdmin`: `petrel queue` against the running queue manager (a `QueueControl`).

A thin adapter: it runs on the event loop, like the manager's scheduling, so memory
and spool always agree. A message in an attempt belongs to that attempt until it is
settled: for it, hold and release only change the flag (the attempt's end saves it
with the results) and delete only marks it (the attempt's end removes it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from petrel.log import log_event
from petrel.queue.admin import describe_envelope, message_info, read_headers
from petrel.queue.envelope import DEFERRED

if TYPE_CHECKING:
    from .manager import QueueManager

__all__ = ["LiveAdmin"]

log = logging.getLogger("petrel.qmgr")


class LiveAdmin:
    def __init__(self, manager: QueueManager) -> None:
        self.manager = manager

    def queue_ids(self) -> list[str]:
        return [m.envelope.queue_id for m in self.manager.all_tracked()]

    def _size(self, queue_id: str) -> int | None:
        try:
            return self.manager.spool.body_size(queue_id)
        except (OSError, ValueError):
            return None

    def snapshot(self) -> list[dict[str, Any]]:
        """The queue as `petrel queue list` shows it, oldest first."""
        tracked = sorted(
            self.manager.all_tracked(),
            key=lambda m: (m.envelope.received_at, m.envelope.queue_id),
        )
        return [
            message_info(m.envelope, self._size(m.envelope.queue_id), active=m.active)
            for m in tracked
        ]

    def counts(self) -> dict[str, int]:
        """Messages by state for `petrel status`: each counted once, the first that fits
        of held, active (in an attempt now), deferred (an open recipient was tried and
        deferred) and queued (not tried yet)."""
        counts = {"total": 0, "queued": 0, "active": 0, "deferred": 0, "hold": 0}
        for tracked in self.manager.all_tracked():
            counts["total"] += 1
            if tracked.envelope.hold:
                counts["hold"] += 1
            elif tracked.active:
                counts["active"] += 1
            elif any(
                r.state == DEFERRED for r in tracked.envelope.recipients
            ):
                counts["deferred"] += 1
            else:
                counts["queued"] += 1
        return counts

    def describe(self, queue_id: str) -> dict[str, Any]:
        """One message for `petrel queue show`: envelope, live state and headers."""
        tracked = self.manager.tracked(queue_id)
        headers = read_headers(self.manager.spool, queue_id)
        return describe_envelope(
            tracked.envelope, self._size(queue_id), headers, active=tracked.active
        )

    def hold(self, queue_id: str) -> bool:
        """Stop trying a message until it is released; False if it was held already."""
        tracked = self.manager.tracked(queue_id)
        if tracked.envelope.hold:
            return False
        tracked.envelope.hold = True  # the manager skips it from now on
        if not tracked.active:  # else the attempt's end saves it with the results
            self.manager.spool.save_state(tracked.envelope)
        log_event(log, "held", queue_id=queue_id)
        self.manager.tell("held", tracked.envelope)
        return True

    def release(self, queue_id: str) -> bool:
        """Put a held message back on its schedule (overdue recipients are tried at once)."""
        tracked = self.manager.tracked(queue_id)
        if not tracked.envelope.hold:
            return False
        tracked.envelope.hold = False
        if not tracked.active:
            self.manager.spool.save_state(tracked.envelope)
            self.manager.reschedule(tracked.envelope)
        log_event(log, "released", queue_id=queue_id)
        self.manager.tell("released", tracked.envelope)
        return True

    def delete(self, queue_id: str) -> bool:
        """Remove a message without notice; False: it goes when its current attempt ends."""
        tracked = self.manager.tracked(queue_id)
        log_event(log, "deleted", queue_id=queue_id, by="operator")
        self.manager.tell("deleted", tracked.envelope)
        if tracked.active:
            tracked.doomed = True
            return False
        self.manager.drop(queue_id)
        return True

    def flush_one(self, queue_id: str) -> bool:
        """Try one message's open recipients now; False when it is held (or has none)."""
        flushed = self.manager.force_one(queue_id)
        if flushed:
            log_event(log, "flushed", messages=1, queue_id=queue_id)
        return flushed

    def flush(self, domain: str | None = None) -> int:
        """Try every open recipient now (of ``domain`` only, if given); held mail stays."""
        found = self.manager.force(domain)
        if found:
            log_event(log, "flushed", messages=len(found), domain=domain or "*")
        return len(found)
