"""Direct delivery: local Maildir copies written at intake, before the 250.

A transaction whose local recipients are few (``delivery.direct``, 16) and whose text
is still in memory does not wait for the queue: intake hands the spool `MaildirCopies`
with the commit, and the spool's commit thread has `MaildirCopier` write them in the
same batch as every other session's spool files. The order, for each batch:

1. each copy into its mailbox's ``tmp/`` (a copy that cannot be written — permissions,
   a full file system — gives its recipient back to the queue: it joins the spool file);
2. the spool files (for the recipients left: remote, LMTP, NOTIFY=SUCCESS, failed
   copies) sealed into ``active/``;
3. one sync round for all of it (one syncfs, or per-file fsyncs for a batch of two);
4. the copies renamed into ``new/``, and their names made durable (round two);
5. the 250.

So the 250 means "in the mailbox", as Dovecot's LMTP. A kill -9 before step 4 ends
leaves at most copies in ``tmp/`` (never acknowledged; `clean_tmp` removes them)
or copies in ``new/`` of a message the client will send again: a duplicate only where
no 250 was seen. Nothing acknowledged is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from petrel.delivery.local import delivery_item
from petrel.delivery.maildir import DeliveryItem, MaildirBatch
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.store import Copies, CopyRound

__all__ = ["MaildirCopier", "MaildirCopies", "direct_recipients"]


def direct_recipients(
    envelope: Envelope, local_domains: frozenset[str] | set[str], limit: int
) -> list[Recipient]:
    """The recipients intake delivers itself: local, no success notice asked for (the
    queue sends those), and at most ``limit`` of them (more: the queue takes all)."""
    chosen = [
        r
        for r in envelope.recipients
        if r.address.rpartition("@")[2].lower() in local_domains
        and not (r.notify and "SUCCESS" in r.notify)
    ]
    return chosen if len(chosen) <= limit else []


class MaildirCopies:
    """One message's copies for its direct recipients (a `petrel.queue.store.Copies`)."""

    __slots__ = ("error", "failed", "items", "recipients")

    def __init__(self, envelope: Envelope, recipients: Sequence[Recipient], text: bytes) -> None:
        self.recipients = recipients
        self.items: list[DeliveryItem | None] = []
        self.failed: list[Recipient] = []
        self.error: Exception | None = None
        for i, recipient in enumerate(recipients):
            try:  # "D": a name the queue's recovery check never mistakes for its own
                self.items.append(
                    delivery_item(envelope, recipient, text, f"{envelope.queue_id}D{i}")
                )
            except ValueError:
                self.items.append(None)
                self.failed.append(recipient)  # the queue will report it

    @property
    def files(self) -> int:
        return len(self.items)

    @property
    def delivered(self) -> list[Recipient]:
        """After a successful commit: the recipients now in their mailboxes."""
        failed = {id(r) for r in self.failed}
        return [r for r in self.recipients if id(r) not in failed]


class MaildirCopier:
    """Writes a commit batch's `MaildirCopies` as one `MaildirBatch` (a `Copier`)."""

    def __init__(self, mailboxes: Path) -> None:
        self.mailboxes = mailboxes

    def write(self, batch: Sequence[Copies], per_file: bool, covered_dev: int) -> CopyRound:
        mine = [c for c in batch if isinstance(c, MaildirCopies)]
        if len(mine) != len(batch):
            raise TypeError("MaildirCopier writes MaildirCopies only")
        return _Round(self.mailboxes, mine, per_file, covered_dev)


class _Round:
    """The copies of one batch: their items' slots in one `MaildirBatch`."""

    def __init__(
        self, root: Path, batch: list[MaildirCopies], per_file: bool, covered_dev: int
    ) -> None:
        items: list[DeliveryItem] = []
        self._slots: list[list[tuple[int, Recipient]]] = []  # per copies: (item, recipient)
        for copies in batch:
            slots = []
            for item, recipient in zip(copies.items, copies.recipients, strict=True):
                if item is not None:
                    slots.append((len(items), recipient))
                    items.append(item)
            self._slots.append(slots)
        self._batch = batch
        self._maildir = MaildirBatch(root, items)
        self._maildir.write(per_file, covered_dev)
        for copies, slots in zip(batch, self._slots, strict=True):
            copies.failed.extend(r for i, r in slots if self._maildir.results[i] is not None)

    def discard(self, copies: Copies, error: Exception) -> None:
        k = next(k for k, mine in enumerate(self._batch) if mine is copies)
        self._maildir.discard(error, {i for i, _ in self._slots[k]})
        self._batch[k].error = error

    def publish(self) -> None:
        written = [
            [i for i, _ in slots if self._maildir.results[i] is None] for slots in self._slots
        ]
        self._maildir.publish()
        for copies, indexes in zip(self._batch, written, strict=True):
            errors = [self._maildir.results[i] for i in indexes]
            late = next((e for e in errors if e is not None), None)
            if late is not None and copies.error is None:
                copies.error = late  # written but not published: the message failed

    def close(self) -> None:
        self._maildir.close()
