"""`MaildirTransport` through the `Transport` protocol: one result per job per recipient."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from petrel.delivery.local import LOCAL, MaildirTransport
from petrel.delivery.outcome import Job, Outcome, Transport
from petrel.queue import Envelope, Recipient, Spool, new_queue_id


async def _queued(spool: Spool, *addresses: str) -> Envelope:
    envelope = Envelope(
        new_queue_id(), "alice@example.test", [Recipient(a) for a in addresses], 0.0
    )
    writer = spool.begin(envelope)
    writer.write(b"Subject: hi\r\n\r\nbody\r\n")
    await spool.commit(writer)
    return envelope


def _new(root: Path, user: str) -> list[bytes]:
    new = root / "example.test" / user / "new"
    return [(new / n).read_bytes() for n in sorted(os.listdir(new))] if new.is_dir() else []


def test_results_per_job_per_recipient(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    spool = Spool(tmp_path / "queue")
    spool.open()

    async def main() -> list[list[tuple[Outcome, str]]]:
        two = await _queued(spool, "bob@example.test", "x/y@example.test", "carol@example.test")
        gone = Envelope(new_queue_id(), "alice@example.test", [Recipient("bob@example.test")], 0.0)
        given = Envelope(new_queue_id(), "", [Recipient("carol@example.test")], 0.0)
        transport: Transport = MaildirTransport(root, spool)
        jobs = [
            Job(two, two.recipients),
            Job(gone, gone.recipients),  # not in the store: its file cannot be read
            Job(given, given.recipients, b"Subject: given\r\n\r\nmine\r\n"),
        ]
        try:
            rows = await transport.deliver(LOCAL, jobs)
        finally:
            assert isinstance(transport, MaildirTransport)
            transport.close()
        return [[(r.outcome, r.status) for r in row] for row in rows]

    rows = asyncio.run(main())
    spool.close()
    assert rows == [
        [(Outcome.DELIVERED, "2.0.0"), (Outcome.FAILED, "5.1.1"), (Outcome.DELIVERED, "2.0.0")],
        [(Outcome.DEFERRED, "4.3.0")],
        [(Outcome.DELIVERED, "2.0.0")],
    ]
    [bob] = _new(root, "bob")
    assert bob.startswith(b"Return-Path: <alice@example.test>\nDelivered-To: bob@example.test\n")
    assert bob.endswith(b"\n\nbody\n")
    assert [m.split(b"\n")[2] for m in _new(root, "carol")] == [b"Subject: hi", b"Subject: given"]


def test_a_recovered_job_already_in_its_mailbox_is_not_written_again(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    spool = Spool(tmp_path / "queue")
    spool.open()

    async def main() -> list[Outcome]:
        envelope = await _queued(spool, "bob@example.test")
        transport = MaildirTransport(root, spool)
        try:
            [[first]] = await transport.deliver(LOCAL, [Job(envelope, envelope.recipients)])
            transport.recovering(True)  # as after a crash that lost the record of it
            again = Job(envelope, envelope.recipients, maybe_done=True)
            [[second]] = await transport.deliver(LOCAL, [again])
            transport.recovering(False)
        finally:
            transport.close()
        return [first.outcome, second.outcome]

    assert asyncio.run(main()) == [Outcome.DELIVERED, Outcome.DELIVERED]
    spool.close()
    assert len(_new(root, "bob")) == 1
