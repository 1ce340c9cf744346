"""Live events for ``/api/v1/events`` (server-sent events) and the dashboard's numbers.

`Events` is a `QueueManager` watcher: on the event loop it turns what happens to a
message into SSE frames for every connected client (``message`` when a mailbox got or
lost a message, ``queue`` for every change in the queue), and counts arrivals and
deliveries per minute for the throughput graph. A client that does not read its frames
is dropped (its queue is bounded) rather than let memory grow.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from petrel.queue.envelope import Envelope

__all__ = ["CLIENT_BACKLOG", "Events"]

CLIENT_BACKLOG = 1000  # frames queued for one client before it is dropped
_MINUTES = 60


class Events:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._clients: set[asyncio.Queue[str | None]] = set()
        # (minute, accepted, delivered) for the last hour, oldest first
        self._minutes: deque[list[int]] = deque(maxlen=_MINUTES)
        self.totals = {"accepted": 0, "delivered": 0, "deferred": 0, "failed": 0}

    # -- clients -------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_BACKLOG)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._clients.discard(queue)

    def close(self) -> None:
        """Shutdown: every stream ends (None is the end-of-stream mark)."""
        for queue in list(self._clients):
            self._drop(queue)

    def _drop(self, queue: asyncio.Queue[str | None]) -> None:
        self._clients.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if not self._clients:
            return
        frame = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for queue in list(self._clients):
            if queue.qsize() >= CLIENT_BACKLOG - 1:
                self._drop(queue)
            else:
                queue.put_nowait(frame)

    # -- the queue manager's watcher -----------------------------------------------------

    def __call__(self, what: str, envelope: Envelope, fields: dict[str, object]) -> None:
        recipient = fields.get("to")
        if what == "queued":
            self._count(accepted=1)
            self.totals["accepted"] += 1
        elif what in ("delivered", "deferred", "failed"):
            self.totals[what] += 1
            if what == "delivered":
                self._count(delivered=1)
                if fields.get("relay") == "local" and isinstance(recipient, str):
                    self.publish(
                        "message",
                        {
                            "event": "new",
                            "mailbox": recipient.lower(),
                            "queue_id": envelope.queue_id,
                        },
                    )
        event: dict[str, Any] = {"event": what, "queue_id": envelope.queue_id}
        if isinstance(recipient, str):
            event["recipient"] = recipient
        for name in ("status", "error"):
            if name in fields:
                event[name] = fields[name]
        self.publish("queue", event)

    def _count(self, accepted: int = 0, delivered: int = 0) -> None:
        minute = int(self.clock() // 60)
        if not self._minutes or self._minutes[-1][0] != minute:
            self._minutes.append([minute, 0, 0])
        self._minutes[-1][1] += accepted
        self._minutes[-1][2] += delivered

    def throughput(self) -> list[dict[str, int]]:
        """Per minute for the last hour, oldest first, quiet minutes included as zeros."""
        now = int(self.clock() // 60)
        seen = {m[0]: m for m in self._minutes}
        return [
            {
                "minute": minute * 60,
                "accepted": seen[minute][1] if minute in seen else 0,
                "delivered": seen[minute][2] if minute in seen else 0,
            }
            for minute in range(now - _MINUTES + 1, now + 1)
        ]
