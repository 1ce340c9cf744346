"""The queue manager: decides what to try when, and hands batches to the transports.

Like Postfix's qmgr it never touches message text itself. Every committed message is
tried at once; a recipient that fails temporarily is retried with exponential backoff
between ``queue.min_backoff`` and ``queue.max_backoff``, and every ``run_interval`` the
whole queue is looked at again. Local recipients go to Maildir in batches (one sync
for many messages); remote ones go to the SMTP/LMTP transport grouped by route, and
both run at once. After each attempt the DSNs the senders asked for are queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from petrel import dsn, smtp
from petrel.config import Config
from petrel.intake import Intake, TooManyHops
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

from .maildir import BodySource, DeliveredKeys, DeliveryItem, deliver_batch
from .smtp import DEFERRED, DELIVERED, FAILED, Job, Result, Route, SmtpTransport, deferred, failed

log = logging.getLogger("petrel.qmgr")

BATCH_MESSAGES = 256  # messages per Maildir batch: one sync pair covers them all
_IN_MEMORY_BODY = 1 << 20  # bodies up to this size are read once and shared
_STOP_GRACE = 10.0  # seconds an attempt in progress may take to finish at shutdown


@dataclass(slots=True)
class _Work:
    envelope: Envelope
    recipient: Recipient
    item: DeliveryItem | None  # None: refused before any attempt (error already recorded)


class QueueManager:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        transport: SmtpTransport | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.policy = policy
        self.clock = clock
        self.mailboxes = config.server.data_dir / "mailboxes"
        self.intake = Intake(config, spool, self)  # notices enter like any message
        self._envelopes: dict[str, Envelope] = {}
        self._ready: deque[str] = deque()
        self._forced: set[str] = set()  # ETRN: try every open recipient, due or not
        # Recovered at start-up: a delivery may have finished just before the crash
        # without being recorded, so Maildir checks before writing again.
        self._recovered: set[str] = set()
        self._timers: list[tuple[float, str]] = []  # heap of (next attempt, queue id)
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petrel-local")
        # Spool file updates (unlinks, state files) get their own thread: behind the
        # delivery batches they waited for the whole backlog, and the files of delivered
        # mail outlived the manager's memory of it (issue 14).
        self._files = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petrel-files")
        # Finished messages whose spool files are being removed: still "known", so the
        # pickup scan never takes a lingering file for new mail.
        self._finishing: set[str] = set()
        # One Maildir batch at a time, each concluded before the next starts: with all of
        # them queued at once, the file thread's unlinks waited on the GIL behind the
        # delivering thread (a few ms per syscall), and a backlog's files stayed to the end.
        self._local_turn = asyncio.Lock()
        # Set while recovered messages remain: their mailboxes' delivered keys, listed once.
        self._delivered_keys: DeliveredKeys | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.transport = transport or SmtpTransport(config)
        self._inflight: set[str] = set()  # messages whose attempt is running
        self._requeue_after: set[str] = set()  # asked for while in flight
        self._pending_notices: dict[tuple[str, str], list[Recipient]] = {}
        self._pending_delay: dict[str, list[Recipient]] = {}
        self._attempts: set[asyncio.Task[None]] = set()
        self._doomed: set[str] = set()  # deleted while in flight: removed after the attempt

    # -- life cycle --------------------------------------------------------------------

    def start(self, recovered: Iterable[Envelope]) -> None:
        for envelope in recovered:
            if envelope.all_final:  # finished just before a crash: only the removal was lost
                self.spool.finish(envelope.queue_id)
            else:
                self._recovered.add(envelope.queue_id)
                self._track(envelope)
        if self._recovered:
            self._delivered_keys = DeliveredKeys(self.mailboxes)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish the batch in progress (its results are recorded), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._attempts:
            # Remote sessions may hang on a stalled peer for command_timeout: give them a
            # grace period, then cancel. A cancelled attempt saves no state, so it is
            # simply tried again after the restart.
            _, stuck = await asyncio.wait(self._attempts, timeout=_STOP_GRACE)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        self._executor.shutdown(wait=True)
        self._files.shutdown(wait=True)

    def submit(self, envelope: Envelope) -> None:
        """A message was just committed: try it now."""
        self._envelopes[envelope.queue_id] = envelope
        self._ready.append(envelope.queue_id)
        self._wake.set()

    def knows(self, queue_id: str) -> bool:
        """True while the message is tracked here (queued, deferred, held, in delivery or
        having its files removed)."""
        return queue_id in self._envelopes or queue_id in self._finishing

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
                task = loop.create_task(self._attempt(batch))
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)

    def _take_batch(self) -> list[Envelope]:
        seen: set[str] = set()
        batch: list[Envelope] = []
        while self._ready and len(batch) < BATCH_MESSAGES:
            queue_id = self._ready.popleft()
            envelope = self._envelopes.get(queue_id)
            if envelope is None or queue_id in seen or envelope.hold:
                continue
            if queue_id in self._inflight:  # being tried: look again once it is done
                self._requeue_after.add(queue_id)
                continue
            seen.add(queue_id)
            batch.append(envelope)
        self._inflight.update(seen)  # until _attempt's end: admin actions only mark these
        return batch

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, batch: list[Envelope]) -> None:
        """Local and remote recipients of ``batch`` at once, then results, DSNs, schedule.

        A message with local recipients only is concluded as soon as the Maildir batch
        is done, without waiting for remote peers: its spool file goes at once.
        """
        loop = asyncio.get_running_loop()
        try:
            now = self.clock()
            local: list[tuple[Envelope, list[Recipient]]] = []
            remote: list[tuple[Envelope, list[Recipient]]] = []
            for envelope in batch:
                forced = envelope.queue_id in self._forced
                self._forced.discard(envelope.queue_id)
                due = [
                    r
                    for r in envelope.recipients
                    if not r.final and (forced or r.next_attempt <= now)
                ]
                due = self._deliver_by(envelope, due, now)
                mine = [r for r in due if self.policy.is_local(r.address)]
                if mine:
                    local.append((envelope, mine))
                others = [r for r in due if r not in mine]
                if others:
                    remote.append((envelope, others))
            remote_ids = {envelope.queue_id for envelope, _ in remote}

            async def local_part() -> None:
                async with self._local_turn:
                    try:
                        await loop.run_in_executor(self._executor, self._deliver, local, now)
                    finally:
                        local_only = [e for e in batch if e.queue_id not in remote_ids]
                        await self._conclude(local_only, now)

            work = [local_part()]
            if remote:
                work.append(self._deliver_remote(remote, now))
            for outcome in await asyncio.gather(*work, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    log.error("delivery batch failed", exc_info=outcome)
            await self._conclude([e for e in batch if e.queue_id in remote_ids], now)
        except Exception:
            log.exception("delivery attempt failed")
        finally:
            for envelope in batch:
                self._inflight.discard(envelope.queue_id)
                if envelope.queue_id in self._requeue_after:
                    self._requeue_after.discard(envelope.queue_id)
                    self._ready.append(envelope.queue_id)
            self._wake.set()

    async def _conclude(self, envelopes: list[Envelope], now: float) -> None:
        """After an attempt: queue the DSNs, settle the schedule, then update the files."""
        file_work: list[Callable[[], None]] = []
        for envelope in envelopes:
            await self._send_notices(envelope, now)
            step = self._settle(envelope)
            if step is not None:
                file_work.append(step)
        if not file_work:
            return
        loop = asyncio.get_running_loop()
        try:  # unlinks and state files: off the event loop, one hop for all
            await loop.run_in_executor(self._files, _run_each, file_work)
        finally:
            self._finishing.difference_update(e.queue_id for e in envelopes)

    def _deliver_by(self, envelope: Envelope, due: list[Recipient], now: float) -> list[Recipient]:
        """RFC 2852: past the BY deadline, R returns the message (5.4.7), N warns once."""
        if envelope.by is None:
            return due
        seconds, mode = envelope.by
        if now < envelope.received_at + seconds:
            return due
        if mode.startswith("R"):
            for r in due:
                self._record(
                    envelope,
                    r,
                    failed("5.4.7", "delivery time expired (DELIVERBY)"),
                    now,
                )
            return []
        for r in due:
            if not r.delay_notified:
                r.status = "4.4.7"
                r.last_error = "delivery time expired (DELIVERBY, notify)"
                self._pending_delay.setdefault(envelope.queue_id, []).append(r)
        return due

    # -- local (worker thread) -----------------------------------------------------------

    def _deliver(self, batch: list[tuple[Envelope, list[Recipient]]], now: float) -> None:
        delivered = self._delivered_keys  # read once: the event loop may drop it meanwhile
        work: list[_Work] = []
        for envelope, local in batch:
            try:
                body = self._body_source(envelope.queue_id)
            except (OSError, ValueError) as exc:  # unreadable or corrupt spool file
                for recipient in local:
                    self._record(envelope, recipient, _local_error(exc), now)
                continue
            for recipient in local:
                try:
                    item = self._item(envelope, recipient, body)
                except ValueError as exc:
                    self._record(envelope, recipient, _local_error(exc), now)
                    continue
                work.append(_Work(envelope, recipient, item))
        items = [w.item for w in work if w.item is not None]
        results = iter(deliver_batch(self.mailboxes, items, delivered)) if items else iter(())
        for w in work:
            error = next(results)
            result = _local_ok() if error is None else _local_error(error)
            self._record(w.envelope, w.recipient, result, now)

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

    # -- remote (event loop) -------------------------------------------------------------

    async def _deliver_remote(
        self, batch: list[tuple[Envelope, list[Recipient]]], now: float
    ) -> None:
        """Group by route (domain, smarthost or LMTP target); one transport call per route."""
        loop = asyncio.get_running_loop()
        routes: dict[Route, list[Job]] = {}
        for envelope, recipients in batch:
            try:
                body = await loop.run_in_executor(None, self.spool.read_body, envelope.queue_id)
            except (OSError, ValueError) as exc:
                for recipient in recipients:
                    self._record(envelope, recipient, _local_error(exc), now)
                continue
            by_route: dict[Route, list[Recipient]] = {}
            for recipient in recipients:
                route = self.transport.route_for(recipient.address)
                by_route.setdefault(route, []).append(recipient)
            for route, members in by_route.items():
                routes.setdefault(route, []).append(Job(envelope, members, body))
        await asyncio.gather(*(self.transport.deliver(r, jobs) for r, jobs in routes.items()))
        for jobs in routes.values():
            for job in jobs:
                for recipient, result in zip(job.recipients, job.results, strict=True):
                    if result is None:
                        result = deferred("4.3.0", "no result from the transport")
                    self._record(job.envelope, recipient, result, now)

    # -- recording -----------------------------------------------------------------------

    def _record(self, envelope: Envelope, recipient: Recipient, result: Result, now: float) -> None:
        recipient.attempts += 1
        recipient.last_attempt = now
        recipient.status = result.status
        recipient.diagnostic = result.diagnostic
        recipient.remote_mta = result.remote_mta
        if result.outcome == DELIVERED:
            recipient.state = "delivered"
            recipient.last_error = None
            recipient.relayed = result.relayed
            self._notify(envelope, recipient, dsn.RELAYED if result.relayed else dsn.DELIVERED)
            log_event(
                log,
                "delivered",
                queue_id=envelope.queue_id,
                to=recipient.address,
                relay=result.remote_mta or "local",
                status=result.status,
            )
            return
        text = result.text
        recipient.last_error = text
        expired = now - envelope.received_at >= self.config.queue.lifetime
        if result.outcome == FAILED or expired:
            recipient.state = "failed"
            if result.outcome != FAILED:
                recipient.status = "4.4.7"
                recipient.last_error = text = f"message expired in queue: {text}"
            self._notify(envelope, recipient, dsn.FAILED)
            log_event(
                log,
                "failed",
                level=logging.ERROR,
                queue_id=envelope.queue_id,
                to=recipient.address,
                status=recipient.status,
                error=text,
            )
            return
        recipient.state = "deferred"
        next_attempt = now + self._backoff(recipient.attempts)
        if envelope.by is not None and envelope.by[1].startswith("R"):
            next_attempt = min(next_attempt, envelope.received_at + envelope.by[0])
        recipient.next_attempt = max(next_attempt, now)
        if (
            not recipient.delay_notified
            and now - envelope.received_at >= self.config.queue.delay_warning
        ):
            self._notify(envelope, recipient, dsn.DELAYED)
        log_event(
            log,
            "deferred",
            level=logging.WARNING,
            queue_id=envelope.queue_id,
            to=recipient.address,
            status=recipient.status,
            error=text,
        )

    def _notify(self, envelope: Envelope, recipient: Recipient, action: str) -> None:
        if action == dsn.DELAYED:
            self._pending_delay.setdefault(envelope.queue_id, []).append(recipient)
            return
        if (envelope.sender == "" and action == dsn.FAILED) or dsn.wants_notice(recipient, action):
            self._pending_notices.setdefault((envelope.queue_id, action), []).append(recipient)

    async def _send_notices(self, envelope: Envelope, now: float) -> None:
        """Queue the DSNs this attempt called for (one per action), like any message."""
        wanted: list[tuple[str, list[Recipient]]] = []
        for action in (dsn.FAILED, dsn.DELIVERED, dsn.RELAYED):
            members = self._pending_notices.pop((envelope.queue_id, action), [])
            if members:
                wanted.append((action, members))
        unique = {id(r): r for r in self._pending_delay.pop(envelope.queue_id, [])}
        delayed = [r for r in unique.values() if not r.delay_notified and not r.final]
        for r in delayed:
            r.delay_notified = True
        delayed = [r for r in delayed if dsn.wants_notice(r, dsn.DELAYED)]
        if delayed:
            wanted.append((dsn.DELAYED, delayed))
        if not wanted:
            return
        loop = asyncio.get_running_loop()
        try:
            message = await loop.run_in_executor(None, self._original, envelope.queue_id)
        except (OSError, ValueError) as exc:
            message = f"Subject: (original message unreadable: {exc})\r\n\r\n".encode()
        for action, members in wanted:
            notice = dsn.build_notice(
                hostname=self.config.server.hostname,
                original=envelope,
                recipients=members,
                action=action,
                message=message,
                now=now,
                lifetime=self.config.queue.lifetime,
            )
            if notice is None:
                log_event(log, "notice-suppressed", queue_id=envelope.queue_id, action=action)
                continue
            try:
                await self.intake.put(notice.envelope, notice.message, None, via="notice")
            except (OSError, TooManyHops) as exc:
                log_event(log, "notice-error", level=logging.ERROR, error=str(exc))
                continue
            log_event(
                log,
                "notice",
                queue_id=envelope.queue_id,
                notice_id=notice.envelope.queue_id,
                action=action,
                to=notice.envelope.recipients[0].address,
            )

    def _original(self, queue_id: str) -> bytes:
        if self.spool.body_size(queue_id) <= dsn.FULL_LIMIT:
            return self.spool.read_body(queue_id)
        return self.spool.read_header(queue_id)

    def _backoff(self, attempts: int) -> float:
        q = self.config.queue
        doublings: int = 2 ** max(attempts - 1, 0)
        return min(q.max_backoff, q.min_backoff * doublings)

    def _settle(self, envelope: Envelope) -> Callable[[], None] | None:
        """Record an attempt's outcome in memory; returns the file work still to do."""
        self._recovered.discard(envelope.queue_id)  # its state is on disk again now
        if not self._recovered:
            self._delivered_keys = None
        if self._settle_admin(envelope):
            return None
        if envelope.all_final:
            self._envelopes.pop(envelope.queue_id, None)
            self._finishing.add(envelope.queue_id)
            return functools.partial(self.spool.finish, envelope.queue_id)
        due = self._next_due(envelope)
        if due is not None:
            heapq.heappush(self._timers, (due, envelope.queue_id))
        return functools.partial(self.spool.save_state, copy.deepcopy(envelope))

    # -- administration (petrel queue, over the control socket) --------------------------
    #
    # These run on the event loop, like _take_batch and _settle, so they never race
    # with scheduling. A message in a delivery batch belongs to the worker thread
    # until _settle: for it, hold and delete only mark, and _settle_admin acts.

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
            message_info(e, self._size(e.queue_id), active=e.queue_id in self._inflight)
            for e in envelopes
        ]

    def describe(self, queue_id: str) -> dict[str, Any]:
        """One message for `petrel queue show`: envelope, live state and headers."""
        envelope = self._envelope(queue_id)
        headers = read_headers(self.spool, queue_id)
        return describe_envelope(
            envelope, self._size(queue_id), headers, active=queue_id in self._inflight
        )

    def hold(self, queue_id: str) -> bool:
        """Stop trying a message until it is released; False if it was held already."""
        envelope = self._envelope(queue_id)
        if envelope.hold:
            return False
        envelope.hold = True  # _take_batch and _next_due skip it from now on
        if queue_id not in self._inflight:  # else _settle saves it with the results
            self.spool.save_state(envelope)
        log_event(log, "held", queue_id=queue_id)
        return True

    def release(self, queue_id: str) -> bool:
        """Put a held message back on its schedule (overdue recipients are tried at once)."""
        envelope = self._envelope(queue_id)
        if not envelope.hold:
            return False
        envelope.hold = False
        if queue_id not in self._inflight:
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
        if queue_id in self._inflight:
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
        """After an attempt: apply a delete that waited for it. True if the message is gone."""
        if envelope.queue_id not in self._doomed:
            return False
        self._doomed.discard(envelope.queue_id)
        self._drop(envelope.queue_id)
        return True


def _run_each(steps: list[Callable[[], None]]) -> None:
    """Worker thread: each step on its own, so one failing file does not stop the rest."""
    for step in steps:
        try:
            step()
        except OSError as exc:  # a full disk: the older state stays, at worst a repeat
            log_event(log, "queue-file-error", level=logging.ERROR, error=str(exc))


def _local_ok() -> Result:
    return Result(DELIVERED, "2.0.0", "delivered to mailbox")


def _local_error(error: Exception | str) -> Result:
    """ValueError never heals (unsafe mailbox name, corrupt file): fail; the rest defers."""
    if isinstance(error, ValueError):
        return Result(FAILED, "5.1.1", str(error), f"x-local; {error}")
    return Result(DEFERRED, "4.3.0", str(error), f"x-local; {error}")
