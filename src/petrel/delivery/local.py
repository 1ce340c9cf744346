"""`MaildirTransport`: local recipients into their Maildirs, one batch at a time.

The transport for the ``local`` route, Postfix's local(8) next to smtp(8): for each job
it reads the message text from the queue store, builds one `maildir.DeliveryItem` per
recipient (Return-Path and Delivered-To first) and hands all of them to
`maildir.deliver_batch` at once, so one sync pair covers the whole batch. All of that
runs in the transport's own thread (``petrel-local``); the results come back to the
event loop, where the queue manager records them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from petrel import smtp
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.store import QueueStore

from .maildir import BodySource, DeliveredKeys, DeliveryItem, deliver_batch
from .outcome import Job, Result, Route, deferred, delivered, local_error

__all__ = ["IN_MEMORY_BODY", "JUNK_FOLDER", "LOCAL", "MaildirTransport", "delivery_item"]

JUNK_FOLDER = "Junk"  # Maildir++ ``.Junk/``: where DMARC's quarantine puts local copies
LOCAL = Route("local", "maildir")  # every local recipient: one route, one batch
IN_MEMORY_BODY = 1 << 20  # bodies up to this size are read once and shared


class MaildirTransport:
    """Delivers jobs into ``<mailboxes>/<domain>/<user>/``; one thread, one batch a call."""

    def __init__(self, mailboxes: Path, store: QueueStore) -> None:
        self.mailboxes = mailboxes
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petrel-local")
        # While recovered messages remain: their mailboxes' delivered keys, listed once.
        self._delivered_keys: DeliveredKeys | None = None

    def recovering(self, active: bool) -> None:
        """Recovered messages are (still) in the queue, or not any more (event loop)."""
        if not active:
            self._delivered_keys = None
        elif self._delivered_keys is None:
            self._delivered_keys = DeliveredKeys(self.mailboxes)

    async def deliver(self, route: Route, jobs: Sequence[Job]) -> list[list[Result]]:
        if not jobs:
            return []
        loop = asyncio.get_running_loop()
        keys = self._delivered_keys  # taken here: the event loop may drop it meanwhile
        return await loop.run_in_executor(self._executor, self._batch, list(jobs), keys)

    def in_thread(self, work: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``work`` on the delivery thread, after what is queued there already.

        The queue's file updates run here: on a thread of their own they waited on the
        GIL behind the delivering thread (a few ms per syscall), and a backlog's spool
        files outlived their delivery by minutes.
        """
        return asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # -- the worker thread -----------------------------------------------------------

    def _batch(self, jobs: list[Job], keys: DeliveredKeys | None) -> list[list[Result]]:
        results: list[list[Result]] = []
        items: list[DeliveryItem] = []
        slots: list[tuple[int, int]] = []  # (job, recipient) of each item
        for j, job in enumerate(jobs):
            row = [_NO_RESULT] * len(job.recipients)  # every slot is set below
            results.append(row)
            try:
                body = self._body_source(job)
            except (OSError, ValueError) as exc:  # unreadable or corrupt spool file
                row[:] = [local_error(exc)] * len(row)
                continue
            for i, recipient in enumerate(job.recipients):
                try:
                    key = f"{job.envelope.queue_id}R{job.envelope.recipients.index(recipient)}"
                    items.append(delivery_item(job.envelope, recipient, body, key, job.maybe_done))
                except ValueError as exc:
                    row[i] = local_error(exc)
                    continue
                slots.append((j, i))
        errors = deliver_batch(self.mailboxes, items, keys) if items else []
        for (j, i), error in zip(slots, errors, strict=True):
            results[j][i] = _OK if error is None else local_error(error)
        return results

    def _body_source(self, job: Job) -> BodySource:
        if job.body is not None:
            return job.body
        queue_id = job.envelope.queue_id
        if self.store.body_size(queue_id) <= IN_MEMORY_BODY:
            return self.store.read_body(queue_id)
        return lambda: self.store.iter_body(queue_id)


_OK = delivered("2.0.0", "delivered to mailbox")
_NO_RESULT = deferred("4.3.0", "no result from the transport")


def delivery_item(
    envelope: Envelope, recipient: Recipient, body: BodySource, key: str, maybe_done: bool = False
) -> DeliveryItem:
    """``recipient``'s copy: Return-Path and Delivered-To in front of the message text.
    ValueError for an address that names no mailbox."""
    address = smtp.parse_path(f"<{recipient.address}>")  # AddressError is a ValueError
    if address is None:
        raise ValueError("the null path is not a mailbox")
    prefix = f"Return-Path: <{envelope.sender}>\nDelivered-To: {recipient.address}\n".encode()
    return DeliveryItem(
        address.domain.lower(),
        address.mailbox,
        prefix,
        body,
        key=key,
        maybe_done=maybe_done,
        folder=JUNK_FOLDER if envelope.junk else "",
    )
