"""Intake, the one way into the queue: trace field, header fix-ups, hop limit, hand-off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from petrel import smtp
from petrel.config import Config, load_config
from petrel.intake import Accepted, Intake, Origin, TooManyHops, expand_recipients
from petrel.queue import Envelope, Spool, new_queue_id


class Taken:
    """A submitter that records what intake handed over."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def submit(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def etrn(self, node: str) -> smtp.Reply:
        return smtp.reply(251, "2.0.0", f"No messages waiting for node {node}")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "petrel.toml"
    path.write_text(
        f'[server]\nhostname = "mx.test"\ndata_dir = "{tmp_path / "data"}"\n'
        "[delivery]\nmax_received = 3\n"
    )
    return load_config(path)


@pytest.fixture
def spool(config: Config) -> Iterator[Spool]:
    s = Spool(config.server.data_dir / "queue")
    s.open()
    yield s
    s.close()


def _envelope(recipients: list[Accepted]) -> Envelope:
    return Envelope(new_queue_id(), "a@client.test", expand_recipients(recipients), 1.7e9)


SMTP_CLIENT = Origin("ESMTPS", ip="192.0.2.1", helo="client.test", tls="TLSv1.3 with cipher X")


def test_a_message_over_the_hop_limit_is_never_queued(config: Config, spool: Spool) -> None:
    taken = Taken()
    intake = Intake(config, spool, taken)
    looping = b"Received: a\r\n" * 3 + b"Subject: loop\r\n\r\nx\r\n"  # + ours = 4 > 3
    with pytest.raises(TooManyHops):
        asyncio.run(intake.put(_envelope([Accepted("b@mx.test", ["b@mx.test"])]), looping, None))
    assert spool.list_ids() == [] and taken.envelopes == []
    assert not list((spool.root / "incoming").iterdir())

    fine = b"Received: a\r\n" * 2 + b"Subject: ok\r\n\r\nx\r\n"
    envelope = _envelope([Accepted("b@mx.test", ["b@mx.test"])])
    asyncio.run(intake.put(envelope, fine, SMTP_CLIENT, given=["b@mx.test"]))
    assert spool.list_ids() == [envelope.queue_id] and taken.envelopes == [envelope]
    text = spool.read_body(envelope.queue_id)
    assert text.startswith(
        b"Received: from client.test (unknown [192.0.2.1])\r\n"
        b"\t(using TLSv1.3 with cipher X)\r\n"
        b"\tby mx.test (Petrel) with ESMTPS id " + envelope.queue_id.encode() + b"\r\n"
        b"\tfor <b@mx.test>; "
    )
    assert text.endswith(fine)


def test_the_for_clause_is_left_out_with_several_recipients(
    config: Config, spool: Spool
) -> None:
    intake = Intake(config, spool, Taken())
    given = [Accepted("b@mx.test", ["b@mx.test"]), Accepted("c@mx.test", ["c@mx.test"])]
    envelope = _envelope(given)
    asyncio.run(intake.put(envelope, b"Subject: s\r\n\r\nx\r\n", SMTP_CLIENT, given=["b", "c"]))
    assert b"\tfor <" not in spool.read_header(envelope.queue_id)


def test_fix_ups_add_only_the_missing_fields_in_front(config: Config, spool: Spool) -> None:
    intake = Intake(config, spool, Taken())
    envelope = _envelope([Accepted("b@mx.test", ["b@mx.test"])])
    message = b"Date: Thu, 27 Mar 2008 23:12:49 -0700\r\nSubject: s\r\n\r\nbody\r\n"

    async def stream() -> None:  # in small pieces, as DATA arrives
        draft = intake.begin(envelope, SMTP_CLIENT, fix_header=True, default_from="me@mx.test")
        for i in range(0, len(message), 5):
            draft.write(message[i : i + 5])
        await intake.commit(draft)

    asyncio.run(stream())
    text = spool.read_body(envelope.queue_id)
    after_trace = text[text.index(b"\r\n", text.index(b"\tby ")) + 2 :]
    assert after_trace.startswith(b"Message-ID: <" + envelope.queue_id.encode())
    assert b"@mx.test>\r\nFrom: me@mx.test\r\n" + message in after_trace
    assert text.count(b"Date:") == 1


def test_aliases_are_expanded_once_and_keep_what_was_given() -> None:
    recipients = expand_recipients(
        [
            Accepted("Sales@mx.test", ["ann@mx.test", "bob@mx.test"]),
            Accepted("ann@mx.test", ["ANN@mx.test"]),  # already there: dropped
            Accepted("cy@mx.test", ["cy@mx.test"], "rfc822;cy@old.test", ("FAILURE",)),
        ]
    )
    assert [(r.address, r.orcpt, r.notify) for r in recipients] == [
        ("ann@mx.test", "rfc822;Sales@mx.test", None),
        ("bob@mx.test", "rfc822;Sales@mx.test", None),
        ("cy@mx.test", "rfc822;cy@old.test", ("FAILURE",)),
    ]
