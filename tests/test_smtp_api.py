"""The core's API surface: sentinels a type checker can narrow, read-only state."""

from __future__ import annotations

import pytest

from petrel import smtp
from petrel.smtp import NEED_DATA, PAUSED, Extensions, Sentinel, ServerConnection, State


def _ready() -> ServerConnection:
    conn = ServerConnection("mx.test", extensions=Extensions(size=1000))
    conn.send(smtp.reply(220, None, "mx.test ESMTP"))
    return conn


def test_sentinels_are_their_own_classes() -> None:
    assert repr(NEED_DATA) == "NEED_DATA" and repr(PAUSED) == "PAUSED"
    assert isinstance(NEED_DATA, Sentinel) and isinstance(PAUSED, Sentinel)
    assert NEED_DATA.__name__ != PAUSED.__name__
    with pytest.raises(AssertionError):

        class Bad(int, metaclass=Sentinel):  # only NAME(Sentinel, metaclass=Sentinel)
            pass


def test_next_event_narrows_on_the_sentinels() -> None:
    conn = _ready()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"EHLO client.test\r\nNOOP\r\n")
    event = conn.next_event()
    if event is NEED_DATA or event is PAUSED:  # mypy narrows both branches
        pytest.fail("an event was expected")
    assert isinstance(event, smtp.Ehlo) and event.domain == "client.test"
    assert conn.next_event() is PAUSED  # the EHLO waits for its reply


@pytest.mark.parametrize("name", ["state", "errors", "authenticated", "extensions"])
def test_connection_state_is_read_only(name: str) -> None:
    conn = _ready()
    with pytest.raises(AttributeError):
        setattr(conn, name, getattr(conn, name))


def test_offer_changes_what_ehlo_advertises() -> None:
    conn = _ready()
    assert conn.state is State.INIT
    assert "STARTTLS" not in conn.ehlo_reply("hi").lines
    offered = Extensions(size=1000, starttls=True)
    conn.offer(offered)
    assert conn.extensions is offered
    assert "STARTTLS" in conn.ehlo_reply("hi").lines
