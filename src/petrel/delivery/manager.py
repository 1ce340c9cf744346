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

from petrel import smtp
from petrel.config import Config
from petrel.log import log_event
from petrel.policy import Policy
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
