"""The scheduler's pure decisions (delivery/schedule.py): no asyncio, no clock, no files."""

from __future__ import annotations

import copy

from petrel import dsn
from petrel.config import QueueSection
from petrel.delivery import schedule
from petrel.delivery.outcome import Outcome, Result, deferred, delivered, failed
from petrel.queue.envelope import Envelope, Recipient

QUEUE = QueueSection(
    run_interval=1800.0,
    min_backoff=300.0,
    max_backoff=3600.0,
    lifetime=86400.0,
    delay_warning=7200.0,
)
T0 = 1_000_000.0
BUSY = deferred("4.2.0", "busy", "dns; mx.far.test")


def _envelope(*recipients: Recipient, sender: str = "alice@mx.test", **kw: object) -> Envelope:
    return Envelope("0000000000000Q", sender, list(recipients), T0, **kw)  # type: ignore[arg-type]


def _step(envelope: Envelope, result: Result, now: float, **kw: object) -> schedule.Decision:
    decision = schedule.settle(envelope, {0: result}, now, QUEUE, **kw)  # type: ignore[arg-type]
    decision.apply(envelope)
    return decision


def test_backoff_doubles_from_min_and_is_capped_at_max() -> None:
    assert [schedule.backoff(n, QUEUE) for n in range(1, 8)] == [
        300,
        600,
        1200,
        2400,
        3600,
        3600,
        3600,
    ]
    envelope = _envelope(Recipient("bob@far.test"))
    now, gaps = T0, []
    for _ in range(6):
        _step(envelope, BUSY, now)
        gaps.append(envelope.recipients[0].next_attempt - now)
        now = envelope.recipients[0].next_attempt
    assert gaps == [300, 600, 1200, 2400, 3600, 3600]
    r = envelope.recipients[0]
    assert (r.state, r.attempts, r.status, r.last_error) == ("deferred", 6, "4.2.0", "busy")
    assert r.remote_mta == "dns; mx.far.test" and r.last_attempt == now - 3600


def test_settle_is_pure() -> None:
    envelope = _envelope(
        Recipient("bob@far.test"), Recipient("carol@far.test", notify=("SUCCESS",))
    )
    before = copy.deepcopy(envelope)
    decision = schedule.settle(envelope, {1: delivered("2.0.0", "ok"), 0: BUSY}, T0, QUEUE)
    assert envelope == before  # nothing changed until applied
    assert sorted(decision.recipients) == [0, 1]
    assert [line.event for line in decision.log] == ["delivered", "deferred"]  # as they came
    decision.apply(envelope)
    assert [r.state for r in envelope.recipients] == ["deferred", "delivered"]


def test_a_deferral_past_the_lifetime_fails_with_4_4_7_and_bounces() -> None:
    envelope = _envelope(Recipient("bob@far.test"))
    decision = _step(envelope, BUSY, T0 + QUEUE.lifetime)
    r = envelope.recipients[0]
    assert (r.state, r.status) == ("failed", "4.4.7")
    assert r.last_error == "message expired in queue: busy"
    assert decision.notices == [(dsn.FAILED, [0])]
    [line] = decision.log
    assert line.event == "failed" and line.fields["error"] == "message expired in queue: busy"


def test_just_before_the_lifetime_it_is_still_deferred() -> None:
    envelope = _envelope(Recipient("bob@far.test", delay_notified=True))
    decision = _step(envelope, BUSY, T0 + QUEUE.lifetime - 1)
    assert envelope.recipients[0].state == "deferred" and decision.notices == []


def test_a_permanent_failure_bounces_at_once_unless_notify_says_never() -> None:
    envelope = _envelope(Recipient("bob@far.test"), Recipient("eve@far.test", notify=("NEVER",)))
    gone = failed("5.1.1", "no such user")
    decision = schedule.settle(envelope, {0: gone, 1: gone}, T0, QUEUE)
    assert decision.notices == [(dsn.FAILED, [0])]
    assert [r.state for r in decision.recipients.values()] == ["failed", "failed"]


def test_notify_success_gets_a_delivered_notice_relayed_when_the_peer_had_no_dsn() -> None:
    wants = ("SUCCESS",)
    envelope = _envelope(
        Recipient("bob@mx.test", notify=wants),
        Recipient("carol@far.test", notify=wants),
        Recipient("dave@far.test"),  # no NOTIFY: failures and delays only
    )
    results = {
        0: delivered("2.0.0", "delivered to mailbox"),
        1: Result(Outcome.DELIVERED, "2.0.0", "250 ok", relayed=True),
        2: delivered("2.0.0", "250 ok"),
    }
    decision = schedule.settle(envelope, results, T0, QUEUE)
    assert decision.notices == [(dsn.DELIVERED, [0]), (dsn.RELAYED, [1])]
    decision.apply(envelope)
    assert envelope.all_final and envelope.recipients[1].relayed
    assert [line.fields["relay"] for line in decision.log] == ["local"] * 3


def test_one_delay_warning_once_delay_warning_has_passed() -> None:
    envelope = _envelope(Recipient("bob@far.test"))
    early = _step(envelope, BUSY, T0 + QUEUE.delay_warning - 1)
    assert early.notices == [] and not envelope.recipients[0].delay_notified
    first = _step(envelope, BUSY, T0 + QUEUE.delay_warning)
    assert first.notices == [(dsn.DELAYED, [0])] and envelope.recipients[0].delay_notified
    again = _step(envelope, BUSY, T0 + QUEUE.delay_warning + 3600)
    assert again.notices == []


def test_a_recipient_not_asking_for_delays_is_still_warned_only_once() -> None:
    envelope = _envelope(Recipient("bob@far.test", notify=("FAILURE",)))
    decision = _step(envelope, BUSY, T0 + QUEUE.delay_warning)
    assert decision.notices == [] and envelope.recipients[0].delay_notified


def test_null_sender_failures_are_listed_for_the_double_bounce_rules_only() -> None:
    # From <>: a failure is listed whatever NOTIFY says, and dsn.build_notice makes it
    # a double bounce to postmaster; delays and successes come to nothing.
    envelope = _envelope(Recipient("bob@far.test", notify=("NEVER",)), sender="")
    decision = _step(envelope, failed("5.1.1", "no such user"), T0)
    assert decision.notices == [(dsn.FAILED, [0])]
    notice = dsn.build_notice(
        hostname="mx.test",
        original=envelope,
        recipients=envelope.recipients,
        action=dsn.FAILED,
        message=b"Subject: x\r\n\r\n",
        now=T0,
    )
    assert notice is not None and notice.envelope.recipients[0].address == "postmaster@mx.test"
    bounced_bounce = _envelope(Recipient("postmaster@mx.test"), sender="", notice="double-bounce")
    _step(bounced_bounce, failed("5.1.1", "no such user"), T0)
    assert (
        dsn.build_notice(
            hostname="mx.test",
            original=bounced_bounce,
            recipients=bounced_bounce.recipients,
            action=dsn.FAILED,
            message=b"",
            now=T0,
        )
        is None
    )
    late = _envelope(Recipient("bob@far.test"), sender="")
    decision = _step(late, BUSY, T0 + QUEUE.delay_warning)
    [(action, members)] = decision.notices
    assert (
        action == dsn.DELAYED
        and dsn.build_notice(
            hostname="mx.test",
            original=late,
            recipients=[late.recipients[i] for i in members],
            action=action,
            message=b"",
            now=T0,
        )
        is None
    )


def test_plan_takes_due_open_recipients_or_every_open_one_when_forced() -> None:
    envelope = _envelope(
        Recipient("a@far.test", next_attempt=T0 - 1),
        Recipient("b@far.test", next_attempt=T0 + 60),
        Recipient("c@far.test", state="delivered"),
    )
    assert schedule.plan(envelope, T0).attempt == [0]
    assert schedule.plan(envelope, T0, forced=True).attempt == [0, 1]
    assert schedule.next_due(envelope) == T0 - 1
    envelope.hold = True
    assert schedule.next_due(envelope) is None


def test_deliverby_return_fails_untried_with_5_4_7() -> None:
    envelope = _envelope(Recipient("bob@far.test"), by=(120, "R"))
    assert schedule.plan(envelope, T0 + 119).attempt == [0]
    _step(envelope, BUSY, T0)
    assert envelope.recipients[0].next_attempt == T0 + 120  # not the 5m backoff
    plan = schedule.plan(envelope, T0 + 120)
    assert plan.attempt == [] and list(plan.refused) == [0]
    decision = schedule.settle(envelope, plan.refused, T0 + 120, QUEUE)
    decision.apply(envelope)
    assert (envelope.recipients[0].state, envelope.recipients[0].status) == ("failed", "5.4.7")
    assert decision.notices == [(dsn.FAILED, [0])]


def test_deliverby_notify_warns_once_unless_the_recipient_is_done() -> None:
    envelope = _envelope(Recipient("bob@far.test"), Recipient("carol@far.test"), by=(60, "N"))
    plan = schedule.plan(envelope, T0 + 600)
    assert plan.attempt == [0, 1] and plan.warned == [0, 1]
    results = {0: BUSY, 1: delivered("2.0.0", "ok")}
    decision = schedule.settle(envelope, results, T0 + 600, QUEUE, warned=plan.warned)
    assert decision.notices == [(dsn.DELAYED, [0])]  # carol was delivered meanwhile
    decision.apply(envelope)
    assert envelope.recipients[0].status == "4.2.0"  # the attempt's own status wins
    assert schedule.plan(envelope, T0 + 900, forced=True).warned == []
    # warned with no result at all (the transport broke): the DELIVERBY status stays
    untried = _envelope(Recipient("bob@far.test"), by=(60, "N"))
    decision = schedule.settle(untried, {}, T0 + 600, QUEUE, warned=[0])
    assert decision.recipients[0].status == "4.4.7" and decision.notices == [(dsn.DELAYED, [0])]
