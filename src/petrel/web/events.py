"""Live events for ``/api/v1/events`` (server-sent events) and the dashboard's numbers.

`Events` is a `QueueManager` watcher: on the event loop it turns what happens to a
message into SSE frames for every connected client (``message`` when a mailbox got or
lost a message, ``queue`` for every change in the queue), and counts arrivals and
deliveries per minute for the throughput graph. A client that does not read its frames
is dropped (its backlog is bounded) rather than let memory grow.

Frames are written in batches: a client's stream wakes at most every `BATCH_SECONDS`
and sends what gathered meanwhile in one write, so a busy server does not pay a write
and a task switch per event on the event loop its SMTP sessions share (``make bench
CONSOLE=1``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from petrel.queue.envelope import Envelope

__all__ = ["BATCH_SECONDS", "CLIENT_BACKLOG", "Client", "Events"]

CLIENT_BACKLOG = 1000  # frames queued for one client before it is dropped
BATCH_SECONDS = 0.1  # a stream writes at most this often: one write for many events
_MINUTES = 60


class Client:
    """One event stream: the frames not yet written, and whether it has ended."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.ended = False
        self.wake = asyncio.Event()

    async def next_batch(self, timeout: float) -> str | None:
        """The frames gathered (after waiting for one, then `BATCH_SECONDS` more),
        "" after ``timeout`` without any, None once the stream has ended."""
        if not self.frames and not self.ended:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return ""
            if not self.ended:
                await asyncio.sleep(BATCH_SECONDS)
        if self.ended:
            return None
        self.wake.clear()
        batch = "".join(self.frames)
        self.frames.clear()
        return batch


class Events:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._clients: set[Client] = set()
        # (minute, accepted, delivered) for the last hour, oldest first
        self._minutes: deque[list[int]] = deque(maxlen=_MINUTES)
        self.totals = {"accepted": 0, "delivered": 0, "deferred": 0, "failed": 0}

    # -- clients -------------------------------------------------------------------------

    def subscribe(self) -> Client:
        client = Client()
        self._clients.add(client)
        return client

    def unsubscribe(self, client: Client) -> None:
        self._clients.discard(client)

    def close(self) -> None:
        """Shutdown: every stream ends."""
        for client in list(self._clients):
            self._drop(client)

    def _drop(self, client: Client) -> None:
        self._clients.discard(client)
        client.frames.clear()
        client.ended = True
        client.wake.set()

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if not self._clients:
            return
        frame = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for client in list(self._clients):
            if len(client.frames) >= CLIENT_BACKLOG:
                self._drop(client)
            else:
                client.frames.append(frame)
                client.wake.set()

    # -- the queue manager's watcher -----------------------------------------------------

    def __call__(self, what: str, envelope: Envelope, fields: dict[str, object]) -> None:
        recipient = fields.get("to")
        if what in ("queued", "accepted"):  # accepted: delivered at intake, never queued
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
