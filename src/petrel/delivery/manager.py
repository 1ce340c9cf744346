"""The queue manager: decides what to try when, and hands batches to the transports.

Like Postfix's qmgr it never touches message text itself. Every committed message is
tried at once; a recipient that fails temporarily is retried with exponential backoff
between ``queue.min_backoff`` and ``queue.max_backoff``, and every ``run_interval`` the
whole queue is looked at again. Each recipient goes to a transport by its route: local
ones to the `MaildirTransport` (one batch, one sync for many messages), remote ones to
the SMTP/LMTP transport grouped by route, both at once. Every transport answers with
`outcome.Result` s on the event loop; `schedule.settle` turns them into the next state
and the notices, which are applied here, on the event loop only. After each attempt
the DSNs the senders asked for are queued through intake like any message.

Operator requests (`petrel queue`) reach the manager through `admin.LiveAdmin`.
What happens to messages is told to `watch` callbacks (the web console's live events)
and counted in `petrel.metrics`.
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from petrel import dsn, metrics, smtp
from petrel.config import Config
from petrel.dns import Resolver
from petrel.intake import Intake, TooManyHops
from petrel.log import log_event
from petrel.policy import Policy
from petrel.queue.admin import UnknownMessageError, matches_domain
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.store import QueueStore
from petrel.status import ServerStats

from . import schedule
from .admin import LiveAdmin
from .local import LOCAL, MaildirTransport
from .outcome import Job, Result, Route, Transport, deferred
from .smtp import SmtpTransport, remote_route

if TYPE_CHECKING:
    from .cluster import ClusterAdmin

log = logging.getLogger("petrel.qmgr")

# A watcher is told (what, envelope, fields): "queued" (a new message), "accepted" (one
# delivered at intake to every recipient, never queued), "delivered",
# "deferred" or "failed" (one recipient; fields as in the log line), "held",
# "released", "deleted" (an operator's action) and "done" (the message left the queue).
Watcher = Callable[[str, Envelope, dict[str, object]], None]

BATCH_MESSAGES = 256  # messages per Maildir batch: one sync pair covers them all
_STOP_GRACE = 10.0  # seconds an attempt in progress may take to finish at shutdown
_NO_RESULT = deferred("4.3.0", "no result from the transport")


@dataclass(slots=True, eq=False)
class Tracked:
    """A message the manager knows, with the marks that wait for its attempt to end."""

    envelope: Envelope
    forced: bool = False  # ETRN or flush: try every open recipient next time, due or not
    active: bool = False  # in an attempt: its recipients belong to that attempt
    again: bool = False  # asked for while active: back on the ready list when it ends
    doomed: bool = False  # deleted while active: removed when the attempt ends
    # Recovered at start-up: a delivery may have finished just before the crash
    # without being recorded, so Maildir checks before writing again.
    recovered: bool = False
    fence: int = 0  # the lease this attempt holds (a shared queue, delivery/cluster.py)


@dataclass(slots=True)
class _Attempt:
    """One message's part of an attempt: the plan and the results as they come back."""

    tracked: Tracked
    plan: schedule.Plan
    results: dict[int, Result] = field(default_factory=dict)  # in the order they came


class QueueManager:
    def __init__(
        self,
        config: Config,
        spool: QueueStore,
        policy: Policy,
        dns: Resolver,
        *,
        clock: Callable[[], float] = time.time,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.policy = policy
        self.clock = clock
        self.mailboxes = config.server.data_dir / "mailboxes"
        self.intake = Intake(config, spool, self)  # notices enter like any message
        self.remote: Transport = transport or SmtpTransport(config, dns, store=spool)
        self.local = MaildirTransport(self.mailboxes, spool)
        # what `petrel queue` talks to (a shared queue's manager answers for the cluster)
        self.admin: LiveAdmin | ClusterAdmin = LiveAdmin(self)
        self.stats = ServerStats()  # what `petrel status` reports: messages in and out
        self._messages: dict[str, Tracked] = {}
        self._recovering = 0  # recovered messages not yet settled
        self._ready: deque[str] = deque()
        self._timers: list[tuple[float, str]] = []  # heap of (next attempt, queue id)
        self._wake = asyncio.Event()
        # Finished messages whose spool files are being removed: still "known", so the
        # pickup scan never takes a lingering file for new mail.
        self._finishing: set[str] = set()
        # Maildir batches queued on the delivery thread at once: two, so the thread never
        # waits for the event loop, and no more, so a batch's spool file updates (queued on
        # the same thread when it is concluded) run before the batch after next. With
        # every batch queued at once, delivered mail kept its spool files to the end of a
        # backlog, and kill -9 restarted it whole (issue 14).
        self._local_turns = asyncio.Semaphore(2)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._attempts: set[asyncio.Task[None]] = set()
        self._watchers: list[Watcher] = []

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher`` on the event loop for every change to a message (see Watcher)."""
        self._watchers.append(watcher)

    def tell(self, what: str, envelope: Envelope, fields: dict[str, object] | None = None) -> None:
        """Tell the watchers; one that raises is logged and the others still hear it."""
        for watcher in self._watchers:
            try:
                watcher(what, envelope, fields or {})
            except Exception:
                log.exception("queue watcher failed")

    def reconfigure(self, config: Config, policy: Policy) -> None:
        """SIGHUP with a new configuration (petrel.reload): routes, queue timing,
        delivery settings and the policy apply to the attempts started from now on."""
        self.config = config
        self.policy = policy
        self.intake = Intake(config, self.spool, self)
        reconfigure = getattr(self.remote, "reconfigure", None)  # a test transport: as is
        if reconfigure is not None:
            reconfigure(config)
        self._wake.set()  # queue.run_interval may be shorter now

    # -- life cycle --------------------------------------------------------------------

    def start(self, recovered: Iterable[Envelope]) -> None:
        for envelope in recovered:
            if envelope.all_final:  # finished just before a crash: only the removal was lost
                self.spool.finish(envelope.queue_id)
            else:
                self._track(envelope, recovered=True)
                self._recovering += 1
        self.local.recovering(self._recovering > 0)
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
        self.local.close()

    def submit(self, envelope: Envelope) -> None:
        """A message was just committed: try it now."""
        found = self._messages.get(envelope.queue_id)
        if found is None:
            self._messages[envelope.queue_id] = Tracked(envelope)
            self.stats.messages_in += 1
            metrics.accepted(metrics.message_source(envelope.protocol, envelope.notice)).inc()
            self.tell("queued", envelope)
        else:  # known already: its marks (an attempt running, a delete) stay
            found.envelope = envelope
        self._ready.append(envelope.queue_id)
        self._wake.set()

    def delivered(self, envelope: Envelope, recipients: Sequence[Recipient]) -> None:
        """Intake delivered some recipients itself: counted as in and out here."""
        if not envelope.recipients:  # nothing queued: `submit` will not count it
            self.stats.messages_in += 1
            self.tell("accepted", envelope)
        self.stats.delivered += len(recipients)
        age = max(0.0, self.clock() - envelope.received_at)
        source = metrics.message_source(envelope.protocol, envelope.notice)
        metrics.delivered_at_intake(source, len(recipients), age, bool(envelope.recipients))
        for recipient in recipients:
            fields: dict[str, object] = {"to": recipient.address, "relay": "local"}
            self.tell("delivered", envelope, {**fields, "status": "2.0.0"})

    def knows(self, queue_id: str) -> bool:
        """True while the message is tracked here (queued, deferred, held, in delivery or
        having its files removed)."""
        return queue_id in self._messages or queue_id in self._finishing

    def idle(self) -> bool:
        """Nothing ready and no attempt running."""
        return not self._ready and not self._attempts

    def _track(self, envelope: Envelope, *, recovered: bool = False) -> None:
        self._messages[envelope.queue_id] = Tracked(envelope, recovered=recovered)
        self._schedule(envelope)

    def _schedule(self, envelope: Envelope) -> bool:
        due = schedule.next_due(envelope)
        if due is None:
            return False
        heapq.heappush(self._timers, (due, envelope.queue_id))
        return True

    # -- what the admin adapter and ETRN use ---------------------------------------------

    def tracked(self, queue_id: str) -> Tracked:
        found = self._messages.get(queue_id)
        if found is None:
            raise UnknownMessageError(f"{queue_id}: no such message")
        return found

    def all_tracked(self) -> list[Tracked]:
        return list(self._messages.values())

    def force_one(self, queue_id: str) -> bool:
        """Mark one message to be tried now, due or not; False when it is held."""
        tracked = self.tracked(queue_id)
        if tracked.envelope.hold or tracked.envelope.all_final:
            return False
        tracked.forced = True
        self._ready.append(queue_id)
        self._wake.set()
        return True

    def force(self, domain: str | None) -> list[str]:
        """Mark every unheld message with an open recipient of ``domain`` (``@d``: and its
        subdomains; None: any) to be tried now, due or not. Only marks: recipients are
        changed by attempts alone."""
        found = [
            m
            for m in self._messages.values()
            if not m.envelope.hold
            and any(
                not r.final and matches_domain(r.address, domain) for r in m.envelope.recipients
            )
        ]
        for m in found:
            m.forced = True
            self._ready.append(m.envelope.queue_id)
        self._wake.set()
        return [m.envelope.queue_id for m in found]

    def reschedule(self, envelope: Envelope) -> None:
        """Back on the timer heap at its earliest open recipient (a release)."""
        if self._schedule(envelope):
            self._wake.set()

    def drop(self, queue_id: str) -> None:
        """Forget a message and remove its files (stale timer and ready entries are skipped)."""
        self.spool.finish(queue_id)
        found = self._messages.pop(queue_id, None)
        if found is not None:
            if found.recovered:
                self._recovered_done()
            self.tell("done", found.envelope)

    def _recovered_done(self) -> None:
        self._recovering -= 1
        if self._recovering == 0:
            self.local.recovering(False)

    # -- ETRN (RFC 1985) ----------------------------------------------------------------

    def etrn(self, node: str) -> smtp.Reply:
        """Start a delivery run for ``node`` (``@node``: it and its subdomains)."""
        if node.startswith("#"):
            return smtp.reply(458, "4.0.0", f"Unable to queue messages for node {node}")
        if not self.force(node):
            return smtp.reply(251, "2.0.0", f"No messages waiting for node {node}")
        return smtp.reply(250, "2.0.0", f"Queuing for node {node} started")

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_scan = self.clock() + self.config.queue.run_interval
        while not self._stopping:
            now = self.clock()
            run_interval = self.config.queue.run_interval  # live: a reload may change it
            next_scan = min(next_scan, now + run_interval)
            if now >= next_scan:
                self._ready.extend(self._messages)
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

    def _take_batch(self) -> list[Tracked]:
        seen: set[str] = set()
        batch: list[Tracked] = []
        while self._ready and len(batch) < BATCH_MESSAGES:
            queue_id = self._ready.popleft()
            found = self._messages.get(queue_id)
            if found is None or queue_id in seen or found.envelope.hold:
                continue
            if found.active:  # being tried: look again once it is done
                found.again = True
                continue
            seen.add(queue_id)
            batch.append(found)
        for found in batch:
            found.active = True  # until _attempt's end: admin actions only mark it
        return batch

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, batch: list[Tracked]) -> None:
        """Local and remote recipients of ``batch`` at once, then results, DSNs, schedule.

        A message with local recipients only is concluded as soon as the Maildir batch
        is done, without waiting for remote peers: its spool file goes at once.
        """
        try:
            now = self.clock()
            parts: list[_Attempt] = []
            local: list[tuple[_Attempt, Job, list[int]]] = []
            remote: dict[Route, list[tuple[_Attempt, Job, list[int]]]] = {}
            for tracked in batch:
                envelope = tracked.envelope
                part = _Attempt(tracked, schedule.plan(envelope, now, forced=tracked.forced))
                tracked.forced = False
                part.results.update(part.plan.refused)
                parts.append(part)
                routes: dict[Route, list[int]] = {}
                for index in part.plan.attempt:
                    address = envelope.recipients[index].address
                    route = (
                        LOCAL
                        if self.policy.is_local(address)
                        else remote_route(self.config, address)
                    )
                    routes.setdefault(route, []).append(index)
                for route, indexes in routes.items():
                    job = Job(
                        envelope,
                        [envelope.recipients[i] for i in indexes],
                        maybe_done=tracked.recovered,
                    )
                    if route == LOCAL:
                        local.append((part, job, indexes))
                    else:
                        remote.setdefault(route, []).append((part, job, indexes))
            remote_ids = {
                p.tracked.envelope.queue_id for jobs in remote.values() for p, _, _ in jobs
            }

            async def local_part() -> None:
                turn = _Turn(self._local_turns)
                await turn.take()
                try:
                    await self._deliver(self.local, LOCAL, local)
                finally:
                    try:
                        await self._conclude(
                            [p for p in parts if p.tracked.envelope.queue_id not in remote_ids],
                            now,
                            queued=turn.give_back,
                        )
                    finally:
                        turn.give_back()

            work = [local_part()]
            work.extend(self._deliver(self.remote, route, jobs) for route, jobs in remote.items())
            for outcome in await asyncio.gather(*work, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    log.error("delivery batch failed", exc_info=outcome)
            await self._conclude(
                [p for p in parts if p.tracked.envelope.queue_id in remote_ids], now
            )
        except Exception:
            log.exception("delivery attempt failed")
        finally:
            for tracked in batch:
                tracked.active = False
                if tracked.again:
                    tracked.again = False
                    self._ready.append(tracked.envelope.queue_id)
            self._wake.set()

    async def _deliver(
        self,
        transport: Transport,
        route: Route,
        jobs: Sequence[tuple[_Attempt, Job, list[int]]],
    ) -> None:
        """One transport call for a route; its results are kept, on the event loop."""
        if not jobs:
            return
        rows = await transport.deliver(route, [job for _, job, _ in jobs])
        for k, (part, _, indexes) in enumerate(jobs):
            row = rows[k] if k < len(rows) else []
            for i, index in enumerate(indexes):
                part.results[index] = row[i] if i < len(row) else _NO_RESULT

    async def _conclude(
        self, parts: list[_Attempt], now: float, queued: Callable[[], None] | None = None
    ) -> None:
        """After an attempt: settle each message, queue its DSNs, then update the files.

        ``queued`` is called once the file updates are queued on the delivery thread.
        """
        file_work: list[Callable[[], None]] = []
        for part in parts:
            envelope = part.tracked.envelope
            decision = schedule.settle(
                envelope, part.results, now, self.config.queue, warned=part.plan.warned
            )
            decision.apply(envelope)
            for line in decision.log:
                log_event(log, line.event, line.level, queue_id=envelope.queue_id, **line.fields)
                self.stats.outcome(line.event)
                self._count(line, envelope, now)
                self.tell(line.event, envelope, line.fields)
            await self._send_notices(envelope, decision.notices, now)
            step = self._settle(part.tracked)
            if step is not None:
                file_work.append(step)
        if not file_work:
            return
        # Unlinks and state files: off the event loop, one hop for all, on the delivery
        # thread (behind at most the batch already queued there).
        done = self.local.in_thread(functools.partial(_run_each, file_work))
        if queued is not None:
            queued()
        try:
            await done
        finally:
            self._finishing.difference_update(p.tracked.envelope.queue_id for p in parts)

    def _count(self, line: schedule.LogLine, envelope: Envelope, now: float) -> None:
        """One recipient's attempt ended: the deliveries counter and the latency histogram."""
        domain = str(line.fields.get("to", "")).rpartition("@")[2].lower()
        domains = self.config.domains
        transport = (
            "local" if domain in domains.local else "lmtp" if domain in domains.lmtp else "smtp"
        )
        metrics.delivery(transport, line.event).inc()
        if line.event == "delivered":
            latency = max(0.0, now - envelope.received_at)
            metrics.latency(transport).observe(latency)

    def _settle(self, tracked: Tracked) -> Callable[[], None] | None:
        """After an attempt, in memory: returns the file work still to do."""
        envelope = tracked.envelope
        if tracked.recovered:  # its state is on disk again now
            tracked.recovered = False
            self._recovered_done()
        if tracked.doomed:  # a delete that waited for the attempt
            tracked.doomed = False
            self.drop(envelope.queue_id)
            return None
        if envelope.all_final:
            self._messages.pop(envelope.queue_id, None)
            self._finishing.add(envelope.queue_id)
            self.tell("done", envelope)
            return functools.partial(self.spool.finish, envelope.queue_id)
        self._schedule(envelope)
        return functools.partial(self.spool.save_state, copy.deepcopy(envelope))

    # -- notices --------------------------------------------------------------------------

    async def _send_notices(
        self, envelope: Envelope, notices: list[tuple[str, list[int]]], now: float
    ) -> None:
        """Queue the DSNs this attempt called for (one per action), like any message."""
        if not notices:
            return
        loop = asyncio.get_running_loop()
        try:
            message = await loop.run_in_executor(None, self._original, envelope.queue_id)
        except (OSError, ValueError) as exc:
            message = f"Subject: (original message unreadable: {exc})\r\n\r\n".encode()
        for action, indexes in notices:
            notice = dsn.build_notice(
                hostname=self.config.server.hostname,
                original=envelope,
                recipients=[envelope.recipients[i] for i in indexes],
                action=action,
                message=message,
                now=now,
                lifetime=self.config.queue.lifetime,
                route=self.policy.notice_recipients,
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
                to=",".join(r.address for r in notice.envelope.recipients),
            )

    def _original(self, queue_id: str) -> bytes:
        if self.spool.body_size(queue_id) <= dsn.FULL_LIMIT:
            return self.spool.read_body(queue_id)
        return self.spool.read_header(queue_id)


def _run_each(steps: list[Callable[[], None]]) -> None:
    """Worker thread: each step on its own, so one failing file does not stop the rest."""
    for step in steps:
        try:
            step()
        except OSError as exc:  # a full disk: the older state stays, at worst a repeat
            log_event(log, "queue-file-error", level=logging.ERROR, error=str(exc))


class _Turn:
    """A place among the Maildir batches queued at once, given back exactly once."""

    __slots__ = ("_given_back", "_semaphore")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._given_back = True

    async def take(self) -> None:
        await self._semaphore.acquire()
        self._given_back = False

    def give_back(self) -> None:
        if not self._given_back:
            self._given_back = True
            self._semaphore.release()
