"""The queue manager's schedule with an injected clock: backoff, lifetime, DELIVERBY,
restart. Nothing sleeps: the fake clock jumps, and the manager is woken by ETRN."""

from __future__ import annotations

import asyncio
import email
from collections.abc import Sequence
from pathlib import Path

from conftest import Clock
from petrel.config import load_config
from petrel.delivery.manager import QueueManager
from petrel.delivery.outcome import Job as BaseJob
from petrel.delivery.outcome import Result
from petrel.delivery.smtp import Job, Route, deferred, failed
from petrel.dns import Resolver
from petrel.policy import Policy
from petrel.policy.aliases import Aliases
from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.ids import new_queue_id
from petrel.queue.spool import Spool


class FakeTransport:
    """A `Transport` that answers every remote recipient with ``self.result`` and
    counts attempts."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.calls = 0
        self.routes: list[Route] = []

    async def deliver(self, route: Route, jobs: Sequence[BaseJob]) -> list[list[Result]]:
        self.calls += 1
        self.routes.append(route)
        return [[self.result] * len(job.recipients) for job in jobs]


def _setup(tmp_path: Path, result, extra: str = ""):  # type: ignore[no-untyped-def]
    path = tmp_path / "petrel.toml"
    path.write_text(
        f"""
[server]
hostname = "mx.test"
data_dir = "{tmp_path / "data"}"
[queue]
min_backoff = "5m"
max_backoff = "1h"
lifetime = "1d"
delay_warning = "2h"
{extra}
"""
    )
    config = load_config(path)
    (tmp_path / "data").mkdir(exist_ok=True)
    spool = Spool(tmp_path / "data" / "queue")
    spool.open()
    policy = Policy(config, Aliases.load(config.aliases.file))
    clock = Clock()
    transport = FakeTransport(result)
    dns = Resolver(config.dns)
    manager = QueueManager(config, spool, policy, dns, clock=clock, transport=transport)
    return config, spool, manager, clock, transport


async def _queue(spool: Spool, manager: QueueManager, clock: Clock, **env) -> Envelope:  # type: ignore[no-untyped-def]
    envelope = Envelope(
        new_queue_id(), "alice@mx.test", [Recipient("bob@far.test")], clock.now, **env
    )
    writer = spool.begin(envelope)
    writer.write(b"Subject: scheduled\r\n\r\nhi\r\n")
    await spool.commit(writer)
    manager.submit(envelope)
    return envelope


async def _settle(manager: QueueManager) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if manager.idle():
            return


def _mailbox(tmp_path: Path, user: str) -> list[bytes]:
    new = tmp_path / "data" / "mailboxes" / "mx.test" / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def test_backoff_doubles_up_to_max_then_lifetime_bounces_with_4_4_7(tmp_path) -> None:
    async def main() -> None:
        _, spool, manager, clock, _transport = _setup(tmp_path, deferred("4.2.0", "busy"))
        manager.start([])
        envelope = await _queue(spool, manager, clock)
        await _settle(manager)
        recipient = envelope.recipients[0]
        gaps = []
        for _ in range(6):
            gaps.append(recipient.next_attempt - clock.now)
            clock.now = recipient.next_attempt
            manager._wake.set()
            await _settle(manager)
        assert gaps == [300, 600, 1200, 2400, 3600, 3600]
        assert recipient.state == "deferred"
        clock.now = envelope.received_at + 86400
        manager.etrn("far.test")
        await _settle(manager)
        assert recipient.state == "failed" and recipient.status == "4.4.7"
        await manager.stop()
        spool.close()

    asyncio.run(main())
    notices = _mailbox(tmp_path, "alice")
    actions = [
        email.message_from_bytes(n).get_payload()[1].get_payload()[1]["Action"] for n in notices
    ]
    assert actions == ["delayed", "failed"]  # one delay warning after 2h, then the bounce


def test_deliverby_return_mode_fails_with_5_4_7_at_the_deadline(tmp_path) -> None:
    async def main() -> None:
        _, spool, manager, clock, _ = _setup(tmp_path, deferred("4.2.0", "busy"))
        manager.start([])
        envelope = await _queue(spool, manager, clock, by=(120, "R"))
        await _settle(manager)
        recipient = envelope.recipients[0]
        assert recipient.next_attempt == envelope.received_at + 120  # not the 5m backoff
        clock.now = recipient.next_attempt
        manager._wake.set()
        await _settle(manager)
        assert recipient.state == "failed" and recipient.status == "5.4.7"
        await manager.stop()
        spool.close()

    asyncio.run(main())
    [notice] = _mailbox(tmp_path, "alice")
    status = email.message_from_bytes(notice).get_payload()[1].get_payload()[1]
    assert status["Status"] == "5.4.7"


def test_deliverby_notify_mode_sends_a_delay_notice_and_keeps_trying(tmp_path) -> None:
    async def main() -> None:
        _, spool, manager, clock, _ = _setup(tmp_path, deferred("4.2.0", "busy"))
        manager.start([])
        envelope = await _queue(spool, manager, clock, by=(60, "N"))
        await _settle(manager)
        clock.now += 600
        manager._wake.set()
        await _settle(manager)
        assert envelope.recipients[0].state == "deferred"
        await manager.stop()
        spool.close()

    asyncio.run(main())
    [notice] = _mailbox(tmp_path, "alice")
    status = email.message_from_bytes(notice).get_payload()[1].get_payload()[1]
    assert status["Action"] == "delayed"


def test_restart_keeps_the_schedule(tmp_path) -> None:
    async def first() -> float:
        _, spool, manager, clock, _ = _setup(tmp_path, deferred("4.2.0", "busy"))
        manager.start([])
        envelope = await _queue(spool, manager, clock)
        await _settle(manager)
        await manager.stop()
        spool.close()
        return envelope.recipients[0].next_attempt

    due = asyncio.run(first())

    async def second() -> None:
        _, spool, manager, clock, transport = _setup(tmp_path, failed("5.1.1", "gone"))
        recovered = spool.recover()
        [envelope] = recovered
        assert envelope.recipients[0].next_attempt == due
        assert envelope.recipients[0].attempts == 1
        manager.start(recovered)
        await _settle(manager)
        assert transport.calls == 0  # not due yet
        clock.now = due
        manager._wake.set()
        await _settle(manager)
        assert transport.calls == 1
        await manager.stop()
        spool.close()

    asyncio.run(second())


def test_job_results_align_with_recipients() -> None:
    recipients = [Recipient("a@x.test"), Recipient("b@x.test")]
    job = Job(Envelope("0000000000000Q", "", recipients, 0.0), recipients, b"")
    job.results[1] = failed("5.0.0", "no")
    job.settle_open(deferred("4.0.0", "later"))
    assert [r.status for r in job.results if r] == ["4.0.0", "5.0.0"]


def test_local_and_remote_recipients_go_to_their_transports(tmp_path) -> None:
    async def main() -> Envelope:
        _, spool, manager, clock, transport = _setup(tmp_path, failed("5.1.1", "gone"))
        manager.start([])
        envelope = Envelope(
            new_queue_id(),
            "alice@mx.test",
            [Recipient("bob@far.test"), Recipient("carol@mx.test")],
            clock.now,
        )
        writer = spool.begin(envelope)
        writer.write(b"Subject: both\r\n\r\nhi\r\n")
        await spool.commit(writer)
        manager.submit(envelope)
        await _settle(manager)
        assert transport.routes == [Route("mx", "far.test")]  # the local one never went there
        await manager.stop()
        assert spool.list_ids() == []  # both final: the message is gone
        spool.close()
        return envelope

    envelope = asyncio.run(main())
    assert [(r.state, r.status) for r in envelope.recipients] == [
        ("failed", "5.1.1"),
        ("delivered", "2.0.0"),
    ]
    [carol] = _mailbox(tmp_path, "carol")
    assert b"Subject: both" in carol
    [bounce] = _mailbox(tmp_path, "alice")
    assert b"bob@far.test" in bounce
