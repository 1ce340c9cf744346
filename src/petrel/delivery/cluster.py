"""The queue manager of a node sharing its queue ([queue] backend = "postgresql").

`ClusterManager` is `QueueManager` with one difference: it keeps no schedule in memory.
The schedule is the database's (`PgStore`); the loop asks the store for due work, which
comes *leased* to this node, runs the same attempts (`QueueManager._attempt`: transports,
`schedule.settle`, DSNs) and records each outcome under its lease's fencing number. So
any node delivers any message, no two at once, and nothing is lost with a node: its
leases expire and another node takes the messages. Leases of attempts in progress are
renewed every third of ``queue.lease``. Idle, the loop sleeps until the next due time or
lease expiry it was told of, or a NOTIFY (a commit, release, flush or ETRN on any node).

The spool's `QueueManager` is untouched by this: a single node keeps its in-memory
scheduler and its speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any

from petrel import smtp
from petrel.config import Config
from petrel.dns import Resolver
from petrel.log import log_event
from petrel.policy import Policy
from petrel.queue.admin import UnknownMessageError, describe_envelope, matches_domain, read_headers
from petrel.queue.envelope import Envelope
from petrel.queue.ids import is_valid_queue_id
from petrel.queue.pg import Lease, Listener, PgStore
from petrel.queue.store import StoreUnavailableError

from .manager import QueueManager, Tracked, _Attempt
from .outcome import Transport

__all__ = ["ClusterAdmin", "ClusterManager", "force_domain"]

log = logging.getLogger("petrel.qmgr")

CLUSTER_BATCH = 64  # messages leased at once: small enough that idle nodes get a share
MAX_ATTEMPTS = 4  # attempts (batches) in flight on one node
_IDLE_MAX = 60.0  # seconds between looks at the queue with nothing known to be due
_RETRY_MAX = 10.0  # the longest wait between tries while the database is unreachable


class ClusterManager(QueueManager):
    """A `QueueManager` whose work comes leased from the shared `PgStore`."""

    def __init__(
        self,
        config: Config,
        store: PgStore,
        policy: Policy,
        dns: Resolver,
        *,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(config, store, policy, dns, transport=transport)
        self.store = store
        self.admin = ClusterAdmin(store)
        self._listener = Listener(store.dsn, self._wake.set)
        self._renewer: asyncio.Task[None] | None = None
        self._store_down = False
        self._outcomes: list[tuple[Envelope, int]] = []  # settled, not yet recorded
        self._unrecorded: list[tuple[Envelope, int]] = []  # their write failed: retried

    def start(self, recovered: Iterable[Envelope]) -> None:
        """Nothing is recovered locally: what a crash left is leased again from the store."""
        loop = asyncio.get_running_loop()
        self._listener.start()
        self._renewer = loop.create_task(self._renew_leases())
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        await self._listener.stop()
        await super().stop()
        if self._unrecorded and not await self._record_pending():
            log_event(
                log,
                "outcomes-not-recorded",
                level=logging.WARNING,
                messages=len(self._unrecorded),
                effect="their leases expire and another node repeats those attempts",
            )
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    def submit(self, envelope: Envelope) -> None:
        """Committed here: the store has it (and told every node); look now."""
        self.stats.messages_in += 1
        self._wake.set()

    # -- ETRN and flush: for the whole cluster ------------------------------------------

    def force(self, domain: str | None) -> list[str]:
        """Mark the cluster's unheld messages with an open recipient of ``domain``."""
        return force_domain(self.store, domain)

    def etrn(self, node: str) -> smtp.Reply:
        try:
            return super().etrn(node)
        except OSError as exc:  # the database is out of reach
            log_event(log, "etrn-failed", level=logging.WARNING, node=node, error=str(exc))
            return smtp.reply(458, "4.3.0", f"Unable to queue messages for node {node}")

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        retry = 1.0
        while not self._stopping:
            self._wake.clear()
            wait: float | None = 0.0
            try:
                if not await self._record_pending():  # outcomes first: then lease again
                    raise StoreUnavailableError("outcomes not recorded yet")
                if len(self._attempts) < MAX_ATTEMPTS:
                    leases = await loop.run_in_executor(
                        None, self.store.lease_due, self.clock(), CLUSTER_BATCH
                    )
                    if leases:
                        self._begin(leases)
                        continue
                wait = await loop.run_in_executor(None, self.store.next_wakeup, self.clock())
                self._store_back()
                retry = 1.0
            except OSError as exc:
                self._store_lost(exc)
                wait, retry = retry, min(retry * 2, _RETRY_MAX)
            except Exception:  # a row that does not parse: say so, and keep delivering
                log.exception("leasing due messages failed")
                wait, retry = retry, min(retry * 2, _RETRY_MAX)
            timeout = min(
                self.config.queue.run_interval, _IDLE_MAX, wait if wait is not None else _IDLE_MAX
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(timeout, 0.0))

    def _begin(self, leases: list[Lease]) -> None:
        """Track the leased messages and start one attempt for them."""
        self._store_back()
        batch = []
        for lease in leases:
            tracked = Tracked(
                lease.envelope,
                forced=lease.forced,
                active=True,
                recovered=lease.taken_over,
                fence=lease.fence,
            )
            if lease.taken_over:  # Maildir looks for its own file before writing again
                self._recovering += 1
                self.local.recovering(True)
                log_event(
                    log, "lease-taken-over", queue_id=lease.envelope.queue_id, fence=lease.fence
                )
            self._messages[lease.envelope.queue_id] = tracked
            batch.append(tracked)
        task = asyncio.get_running_loop().create_task(self._attempt(batch))
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)

    def _settle(self, tracked: Tracked) -> Callable[[], None] | None:
        """Memory forgets the message; its outcome waits for `_conclude`'s one write."""
        envelope = tracked.envelope
        self._messages.pop(envelope.queue_id, None)
        if tracked.recovered:
            tracked.recovered = False
            self._recovered_done()
        self._outcomes.append((copy.deepcopy(envelope), tracked.fence))
        return None

    async def _conclude(
        self, parts: list[_Attempt], now: float, queued: Callable[[], None] | None = None
    ) -> None:
        """Settle and send the DSNs as a single node does, then record every outcome in
        one fenced transaction: a commit per batch, not per message."""
        await super()._conclude(parts, now, queued)
        outcomes, self._outcomes = self._outcomes, []
        if queued is not None:  # no file work waits on the Maildir thread: its turn is free
            queued()
        self._unrecorded.extend(outcomes)
        await self._record_pending()

    async def _record_pending(self) -> bool:
        """Write the outcomes waiting to be recorded; False while the store is out of reach.

        They wait (their leases renewed) rather than being dropped: an attempt whose
        outcome was lost to an outage would be repeated once its lease ran out.
        """
        if not self._unrecorded:
            return True
        batch, self._unrecorded = self._unrecorded, []
        loop = asyncio.get_running_loop()
        try:
            _, stale = await loop.run_in_executor(None, self.store.record_many, batch)
        except OSError as exc:
            self._unrecorded = batch + self._unrecorded
            self._store_lost(exc)
            return False
        for reason in stale:  # another node took the message over: its attempt counts
            log_event(log, "lease-lost", level=logging.WARNING, error=reason)
        return True

    async def _renew_leases(self) -> None:
        """Keep the leases of long attempts: every third of ``queue.lease``."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.queue.lease / 3)
            fences = {q: m.fence for q, m in self._messages.items() if m.active}
            settled = self._outcomes + self._unrecorded  # attempts over, outcome not written
            fences.update((e.queue_id, fence) for e, fence in settled)
            if not fences:
                continue
            with contextlib.suppress(OSError):  # the store is down: the next round tries
                await loop.run_in_executor(None, self.store.renew, fences)

    def _store_lost(self, exc: OSError) -> None:
        if not self._store_down:
            self._store_down = True
            log_event(log, "queue-store-unavailable", level=logging.ERROR, error=str(exc))

    def _store_back(self) -> None:
        if self._store_down:
            self._store_down = False
            log_event(log, "queue-store-available")


def force_domain(store: PgStore, domain: str | None) -> list[str]:
    """flush and ETRN for the cluster: every unheld message with an open recipient of
    ``domain`` (``@d``: and its subdomains; None: any) is tried next, due or not, by
    whichever node leases it first. Returns their ids."""
    ids = sorted({q for q, address in store.open_recipients() if matches_domain(address, domain)})
    store.force(ids)
    return ids


class ClusterAdmin:
    """`petrel queue` and `petrel status` for the whole cluster, straight from the store.

    Runs on the event loop of a node (the control socket's ``status``) or in
    ``petrel queue`` itself; each request is one or two short statements. A message
    leased by a node is shown as being delivered with the node's name; deleting one
    marks it, and the attempt's end removes it.
    """

    def __init__(self, store: PgStore) -> None:
        self.store = store

    def queue_ids(self) -> list[str]:
        return self.store.list_ids()

    def snapshot(self) -> list[dict[str, Any]]:
        return self.store.snapshot()

    def counts(self) -> dict[str, Any]:
        try:
            return self.store.counts()
        except OSError as exc:
            return {"error": str(exc)}

    def _envelope(self, queue_id: str) -> Envelope:
        _check(queue_id)
        try:
            return self.store.load(queue_id)
        except (FileNotFoundError, ValueError):
            raise UnknownMessageError(f"{queue_id}: no such message") from None

    def describe(self, queue_id: str) -> dict[str, Any]:
        envelope = self._envelope(queue_id)
        lease = self.store.lease_of(queue_id)
        info = describe_envelope(
            envelope,
            self.store.body_size(queue_id),
            read_headers(self.store, queue_id),
            active=lease is not None,
        )
        if lease is not None:
            info["lease"] = lease
        return info

    def flush(self, domain: str | None = None) -> int:
        count = len(force_domain(self.store, domain))
        if count:
            log_event(log, "flushed", messages=count, domain=domain or "*")
        return count

    def flush_one(self, queue_id: str) -> bool:
        """Have one message tried next by whichever node leases it; False when held."""
        envelope = self._envelope(queue_id)
        if envelope.hold or envelope.all_final:
            return False
        self.store.force([queue_id])
        log_event(log, "flushed", messages=1, queue_id=queue_id)
        return True

    def delete(self, queue_id: str) -> bool:
        _check(queue_id)
        removed = self._known(queue_id, self.store.delete(queue_id))
        log_event(log, "deleted", queue_id=queue_id, by="operator")
        return removed

    def hold(self, queue_id: str) -> bool:
        _check(queue_id)
        changed = self._known(queue_id, self.store.set_hold(queue_id, True))
        if changed:
            log_event(log, "held", queue_id=queue_id)
        return changed

    def release(self, queue_id: str) -> bool:
        _check(queue_id)
        changed = self._known(queue_id, self.store.set_hold(queue_id, False))
        if changed:
            log_event(log, "released", queue_id=queue_id)
        return changed

    @staticmethod
    def _known(queue_id: str, answer: bool | None) -> bool:
        if answer is None:
            raise UnknownMessageError(f"{queue_id}: no such message")
        return answer


def _check(queue_id: str) -> None:
    if not is_valid_queue_id(queue_id):
        raise UnknownMessageError(f"{queue_id}: no such message")
