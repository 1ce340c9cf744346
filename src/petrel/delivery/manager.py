"""The queue manager: decides what to try when, and hands batches to the transports.

Like Postfix's qmgr it never touches message text itself. Every committed message is
tried at once; a recipient that fails temporarily is retried with exponential backoff
between ``queue.min_backoff`` and ``queue.max_backoff``, and every ``run_interval`` the
whole queue is looked at again. Local recipients go to Maildir in batches (one sync
for many messages); remote ones wait for the relay transports of the delivery issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petrel import smtp
from petrel.config import Config
from petrel.log import log_event
from petrel.policy import Policy
from petrel.queue.admin import (
    UnknownMessageError,
    describe_envelope,
    matches_domain,
    message_info,
    read_headers,
)
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.spool import Spool

from .maildir import BodySource, DeliveryItem, deliver_batch

log = logging.getLogger("petrel.qmgr")

BATCH_MESSAGES = 256  # messages per Maildir batch: one sync pair covers them all
_IN_MEMORY_BODY = 1 << 20  # bodies up to this size are read once and shared
_REMOTE_NOT_YET = "remote delivery is not available in this build; message kept in queue"


@dataclass(slots=True)
class _Work:
    envelope: Envelope
    recipient: Recipient
    item: DeliveryItem | None  # None: not deliverable by this build (remote)


class QueueManager:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.spool = spool
        self.policy = policy
        self.clock = clock
        self.mailboxes = config.server.data_dir / "mailboxes"
        self._envelopes: dict[str, Envelope] = {}
        self._ready: deque[str] = deque()
        self._forced: set[str] = set()  # ETRN: try every open recipient, due or not
        # Recovered at start-up: a delivery may have finished just before the crash
        # without being recorded, so Maildir checks before writing again.
        self._recovered: set[str] = set()
        self._timers: list[tuple[float, str]] = []  # heap of (next attempt, queue id)
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petrel-local")
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_flight: set[str] = set()  # ids in a delivery batch right now
        self._doomed: set[str] = set()  # deleted while in flight: removed after the batch

    # -- life cycle --------------------------------------------------------------------

    def start(self, recovered: Iterable[Envelope]) -> None:
        for envelope in recovered:
            if envelope.all_final:  # finished just before a crash: only the removal was lost
                self.spool.finish(envelope.queue_id)
            else:
                self._recovered.add(envelope.queue_id)
                self._track(envelope)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish the batch in progress (its results are recorded), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def submit(self, envelope: Envelope) -> None:
        """A message was just committed: try it now."""
        self._envelopes[envelope.queue_id] = envelope
        self._ready.append(envelope.queue_id)
        self._wake.set()

    def knows(self, queue_id: str) -> bool:
        """True while the message is tracked here (queued, deferred, held or in delivery)."""
        return queue_id in self._envelopes

    def _track(self, envelope: Envelope) -> None:
        self._envelopes[envelope.queue_id] = envelope
        due = self._next_due(envelope)
        if due is not None:
            heapq.heappush(self._timers, (due, envelope.queue_id))

    @staticmethod
    def _next_due(envelope: Envelope) -> float | None:
        times = [r.next_attempt for r in envelope.recipients if not r.final]
        return min(times) if times and not envelope.hold else None

    # -- ETRN (RFC 1985) ----------------------------------------------------------------

    def etrn(self, node: str) -> smtp.Reply:
        """Start a delivery run for ``node`` (``@node``: it and its subdomains)."""
        if node.startswith("#"):
            return smtp.reply(458, "4.0.0", f"Unable to queue messages for node {node}")
        wanted = node.lstrip("@").lower()
        subdomains = node.startswith("@")

        def matches(address: str) -> bool:
            domain = address.rpartition("@")[2].lower()
            return domain == wanted or (subdomains and domain.endswith("." + wanted))

        found = [
            queue_id
            for queue_id, envelope in self._envelopes.items()
            if not envelope.hold
            and any(not r.final and matches(r.address) for r in envelope.recipients)
        ]
        if not found:
            return smtp.reply(251, "2.0.0", f"No messages waiting for node {node}")
        # Recipients are only changed by the delivery worker: mark, don't touch.
        self._forced.update(found)
        self._ready.extend(found)
        self._wake.set()
        return smtp.reply(250, "2.0.0", f"Queuing for node {node} started")

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        run_interval = self.config.queue.run_interval
        next_scan = self.clock() + run_interval
        while not self._stopping:
            now = self.clock()
            if now >= next_scan:
                self._ready.extend(self._envelopes)
                next_scan = now + run_interval
            while self._timers and self._timers[0][0] <= now:
                self._ready.append(heapq.heappop(self._timers)[1])
            if not self._ready:
                wait = next_scan - now
                if self._timers:
                    wait = min(wait, self._timers[0][0] - now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(wait, 0.0))
                continue
            batch = self._take_batch()
            if batch:
                try:
                    await loop.run_in_executor(self._executor, self._deliver, batch)
                except Exception:
                    log.exception("delivery batch failed")
                for envelope in batch:
                    self._after_attempt(envelope)

    def _take_batch(self) -> list[Envelope]:
        seen: set[str] = set()
        batch: list[Envelope] = []
        while self._ready and len(batch) < BATCH_MESSAGES:
            queue_id = self._ready.popleft()
            envelope = self._envelopes.get(queue_id)
            if envelope is None or queue_id in seen or envelope.hold:
                continue
            seen.add(queue_id)
            batch.append(envelope)
        self._in_flight.update(seen)
        return batch

    # -- one batch (worker thread) -------------------------------------------------------

    def _deliver(self, batch: list[Envelope]) -> None:
        now = self.clock()
        work: list[_Work] = []
        for envelope in batch:
            forced = envelope.queue_id in self._forced
            self._forced.discard(envelope.queue_id)
            due = [
                r for r in envelope.recipients if not r.final and (forced or r.next_attempt <= now)
            ]
            local = [r for r in due if self.policy.is_local(r.address)]
            work.extend(_Work(envelope, r, None) for r in due if r not in local)
            if not local:
                continue
            try:
                body = self._body_source(envelope.queue_id)
            except (OSError, ValueError) as exc:  # unreadable or corrupt spool file
                for recipient in local:
                    self._record(envelope, recipient, exc, now)
                continue
            for recipient in local:
                try:
                    item = self._item(envelope, recipient, body)
                except ValueError as exc:
                    self._record(envelope, recipient, exc, now)
                    continue
                work.append(_Work(envelope, recipient, item))
        items = [w.item for w in work if w.item is not None]
        results = iter(deliver_batch(self.mailboxes, items)) if items else iter(())
        for w in work:
            error: Exception | str | None
            error = next(results) if w.item is not None else _REMOTE_NOT_YET
            self._record(w.envelope, w.recipient, error, now)

    def _body_source(self, queue_id: str) -> BodySource:
        if self.spool.body_size(queue_id) <= _IN_MEMORY_BODY:
            return self.spool.read_body(queue_id)
        return lambda: self.spool.iter_body(queue_id)

    def _item(self, envelope: Envelope, recipient: Recipient, body: BodySource) -> DeliveryItem:
        address = smtp.parse_path(f"<{recipient.address}>")  # AddressError is a ValueError
        if address is None:
            raise ValueError("the null path is not a mailbox")
        prefix = (f"Return-Path: <{envelope.sender}>\nDelivered-To: {recipient.address}\n").encode()
        return DeliveryItem(
            address.domain.lower(),
            address.mailbox,
            prefix,
            body,
            key=f"{envelope.queue_id}R{envelope.recipients.index(recipient)}",
            maybe_done=envelope.queue_id in self._recovered,
        )

    def _record(
        self, envelope: Envelope, recipient: Recipient, error: Exception | str | None, now: float
    ) -> None:
        recipient.attempts += 1
        if error is None:
            recipient.state = "delivered"
            recipient.last_error = None
            log_event(
                log, "delivered", queue_id=envelope.queue_id, to=recipient.address, relay="local"
            )
            return
        text = str(error)
        recipient.last_error = text
        permanent = isinstance(error, ValueError)  # an unsafe mailbox name never heals
        expired = now - envelope.received_at >= self.config.queue.lifetime
        if permanent or expired:
            recipient.state = "failed"
            log_event(
                log,
                "failed",
                level=logging.ERROR,
                queue_id=envelope.queue_id,
                to=recipient.address,
                error=text if permanent else f"expired in queue: {text}",
            )
            return
        recipient.state = "deferred"
        recipient.next_attempt = now + self._backoff(recipient.attempts)
        if error is not _REMOTE_NOT_YET:
            log_event(
                log,
                "deferred",
                level=logging.WARNING,
                queue_id=envelope.queue_id,
                to=recipient.address,
                error=text,
            )

    def _backoff(self, attempts: int) -> float:
        q = self.config.queue
        return min(q.max_backoff, q.min_backoff * 2 ** max(attempts - 1, 0))

    def _after_attempt(self, envelope: Envelope) -> None:
        self._recovered.discard(envelope.queue_id)  # its state is on disk again now
        if self._settle_admin(envelope):
            return
        if envelope.all_final:
            self.spool.finish(envelope.queue_id)
            self._envelopes.pop(envelope.queue_id, None)
            return
        self.spool.save_state(envelope)
        due = self._next_due(envelope)
        if due is not None:
            heapq.heappush(self._timers, (due, envelope.queue_id))

    @property
    def mailbox_root(self) -> Path:
        return self.mailboxes

    # -- administration (petrel queue, over the control socket) --------------------------
    #
    # These run on the event loop, like _take_batch and _after_attempt, so they never
    # race with scheduling. A message in a delivery batch belongs to the worker thread
    # until _after_attempt: for it, hold and delete only mark, and _settle_admin acts.

    def queue_ids(self) -> list[str]:
        return list(self._envelopes)

    def _envelope(self, queue_id: str) -> Envelope:
        envelope = self._envelopes.get(queue_id)
        if envelope is None:
            raise UnknownMessageError(f"{queue_id}: no such message")
        return envelope

    def _size(self, queue_id: str) -> int | None:
        try:
            return self.spool.body_size(queue_id)
        except (OSError, ValueError):
            return None

    def snapshot(self) -> list[dict[str, Any]]:
        """The queue as `petrel queue list` shows it, oldest first."""
        envelopes = sorted(self._envelopes.values(), key=lambda e: (e.received_at, e.queue_id))
        return [
            message_info(e, self._size(e.queue_id), active=e.queue_id in self._in_flight)
            for e in envelopes
        ]

    def describe(self, queue_id: str) -> dict[str, Any]:
        """One message for `petrel queue show`: envelope, live state and headers."""
        envelope = self._envelope(queue_id)
        headers = read_headers(self.spool, queue_id)
        return describe_envelope(
            envelope, self._size(queue_id), headers, active=queue_id in self._in_flight
        )

    def hold(self, queue_id: str) -> bool:
        """Stop trying a message until it is released; False if it was held already."""
        envelope = self._envelope(queue_id)
        if envelope.hold:
            return False
        envelope.hold = True  # _take_batch and _next_due skip it from now on
        if queue_id not in self._in_flight:  # else _after_attempt saves it with the results
            self.spool.save_state(envelope)
        log_event(log, "held", queue_id=queue_id)
        return True

    def release(self, queue_id: str) -> bool:
        """Put a held message back on its schedule (overdue recipients are tried at once)."""
        envelope = self._envelope(queue_id)
        if not envelope.hold:
            return False
        envelope.hold = False
        if queue_id not in self._in_flight:
            self.spool.save_state(envelope)
            due = self._next_due(envelope)
            if due is not None:
                heapq.heappush(self._timers, (due, queue_id))
                self._wake.set()
        log_event(log, "released", queue_id=queue_id)
        return True

    def delete(self, queue_id: str) -> bool:
        """Remove a message without notice; False: it goes when its current attempt ends."""
        self._envelope(queue_id)
        log_event(log, "deleted", queue_id=queue_id, by="operator")
        if queue_id in self._in_flight:
            self._doomed.add(queue_id)
            return False
        self._drop(queue_id)
        return True

    def flush(self, domain: str | None = None) -> int:
        """Try every open recipient now (of ``domain`` only, if given); held mail stays."""
        found = [
            queue_id
            for queue_id, envelope in self._envelopes.items()
            if not envelope.hold
            and any(not r.final and matches_domain(r.address, domain) for r in envelope.recipients)
        ]
        self._forced.update(found)
        self._ready.extend(found)
        self._wake.set()
        if found:
            log_event(log, "flushed", messages=len(found), domain=domain or "*")
        return len(found)

    def _drop(self, queue_id: str) -> None:
        self.spool.finish(queue_id)
        self._envelopes.pop(queue_id, None)
        self._forced.discard(queue_id)  # stale timer and ready entries are skipped

    def _settle_admin(self, envelope: Envelope) -> bool:
        """After a batch: apply a delete that waited for it. True if the message is gone."""
        self._in_flight.discard(envelope.queue_id)
        if envelope.queue_id not in self._doomed:
            return False
        self._doomed.discard(envelope.queue_id)
        self._drop(envelope.queue_id)
        return True
