"""Unit tests of the sans-IO ``ClientConnection``, partly against the real ServerConnection."""

from __future__ import annotations

import pytest

from petrel.smtp import (
    NEED_DATA,
    ClientConnection,
    LocalProtocolError,
    RemoteProtocolError,
    dot_stuff,
)
from smtp_driver import Client as ServerDriver
from smtp_driver import client_replies as _replies


def test_pipelined_replies_match_their_commands_against_the_real_server() -> None:
    server = ServerDriver()
    client = ClientConnection()
    [greeting] = _replies(client, server.greeting)
    assert greeting.command == "CONNECT" and greeting.reply.code == 220
    [ehlo] = _replies(client, server.send(client.send_command("EHLO", "me.test")))
    assert ehlo.reply.code == 250 and client.supports("pipelining") and client.supports("DSN")
    assert client.max_size == 20_000_000
    wire = (
        client.send_command("MAIL", "FROM:<a@x.test>")
        + client.send_command("RCPT", "TO:<b@y.test>")
        + client.send_command("RCPT", "TO:<c@y.test>")
        + client.send_command("DATA")
    )
    replies = _replies(client, server.send(wire))
    assert [(r.command, r.reply.code) for r in replies] == [
        ("MAIL", 250),
        ("RCPT", 250),
        ("RCPT", 250),
        ("DATA", 354),
    ]
    assert replies[1].reply.status == "2.1.5"
    assert not replies[1].reply.lines[0].startswith("2.1.5")  # the code is split off
    [end] = _replies(client, server.send(client.send_data(b".dot\nline")))
    assert end.command == "END" and end.reply.code == 250
    assert server.data == b".dot\r\nline\r\n"


def test_lmtp_expects_one_reply_per_accepted_recipient() -> None:
    client = ClientConnection(lmtp=True)
    _replies(client, b"220 hi\r\n")
    client.send_command("LHLO", "me")
    _replies(client, b"250-lmtp.test\r\n250 PIPELINING\r\n")
    client.send_command("MAIL", "FROM:<>")
    for rcpt in ("a", "b", "c"):
        client.send_command("RCPT", f"TO:<{rcpt}@x>")
    replies = _replies(client, b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n")
    assert [r.reply.code for r in replies] == [250, 250, 550, 250]
    client.send_command("DATA")
    _replies(client, b"354 go ahead\r\n")
    client.send_data(b"x")
    assert client.waiting_for == ("END", "END")
    ends = _replies(client, b"250 2.0.0 a ok\r\n452 4.2.2 b full\r\n")
    assert [(e.reply.code, e.reply.status) for e in ends] == [(250, "2.0.0"), (452, "4.2.2")]


def test_multiline_reply_and_auth_keywords() -> None:
    client = ClientConnection()
    _replies(client, b"220 hi\r\n")
    client.send_command("EHLO", "me")
    [_reply] = _replies(client, b"250-x\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE\r\n")
    assert client.auth_mechanisms == ["PLAIN", "LOGIN"]
    assert client.max_size is None


def test_sasl_response_is_answered_as_auth() -> None:
    client = ClientConnection()
    _replies(client, b"220 hi\r\n")
    client.send_command("AUTH", "LOGIN")
    assert client.send_auth_response("dXNlcg==") == b"dXNlcg==\r\n"
    replies = _replies(client, b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n")
    assert [r.command for r in replies] == ["AUTH", "AUTH"]
    with pytest.raises(LocalProtocolError):
        client.send_auth_response("a\r\nb")


def test_starttls_drops_injected_bytes() -> None:
    client = ClientConnection()
    _replies(client, b"220 hi\r\n")
    client.send_command("STARTTLS")
    [ready] = _replies(client, b"220 go ahead\r\n250 injected\r\n")
    assert ready.reply.code == 220
    assert client.next_event() is NEED_DATA  # the injected reply is gone
    with pytest.raises(LocalProtocolError):
        client.send_command("EHLO", "me")
    client.tls_established()
    assert client.extensions == {}


@pytest.mark.parametrize(
    "data",
    [b"hello\r\n", b"250-a\r\n251 b\r\n", b"x" * 5000],
)
def test_malformed_replies_are_remote_errors(data: bytes) -> None:
    client = ClientConnection()
    client.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_unsolicited_reply_is_an_error() -> None:
    client = ClientConnection()
    _replies(client, b"220 hi\r\n")
    with pytest.raises(RemoteProtocolError):
        _replies(client, b"250 what\r\n")


def test_dot_stuff() -> None:
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b".a\n.b\r\nc") == b"..a\r\n..b\r\nc\r\n.\r\n"


def test_lmtp_server_core_lhlo_and_per_recipient_replies() -> None:
    from petrel.smtp import EndOfData, reply

    server = ServerDriver(lmtp=True)
    assert server.last("EHLO x.test").startswith("500")
    assert server.last("HELO x.test").startswith("500")
    assert server.last("LHLO x.test").startswith("250 ")
    server.lines("MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "RCPT TO:<c@y.test>")
    server.policy[EndOfData] = lambda e: reply(250, "2.0.0", "queued")
    lines = server.lines("DATA", "hi", ".")
    assert lines[-2:] == ["250 2.0.0 queued", "250 2.0.0 queued"]  # one per recipient
    server.policy.pop(EndOfData)
    server.lines("MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "RCPT TO:<c@y.test>", "DATA")
    server.conn.receive_data(b"hi\r\n.\r\n")
    event = server.conn.next_event()
    while not isinstance(event, EndOfData):
        event = server.conn.next_event()
    with pytest.raises(LocalProtocolError):
        server.conn.send_per_recipient([reply(250, "2.0.0", "only one")])
    out = server.conn.send_per_recipient([reply(250, "2.0.0", "ok"), reply(550, "5.1.1", "no")])
    assert out == b"250 2.0.0 ok\r\n550 5.1.1 no\r\n"
    assert server.last("NOOP").startswith("250")


def test_smtp_server_core_refuses_lhlo() -> None:
    assert ServerDriver().last("LHLO x.test").startswith("500")


def test_auth_login_exchange_keeps_base64_case_and_matches_replies() -> None:
    conn = ClientConnection()
    _replies(conn, b"220 mx ESMTP\r\n")
    assert conn.send_command("AUTH", "LOGIN") == b"AUTH LOGIN\r\n"
    [challenge] = _replies(conn, b"334 VXNlcm5hbWU6\r\n")
    assert (challenge.command, challenge.reply.code) == ("AUTH", 334)
    assert conn.send_auth_response("d2lsbGll") == b"d2lsbGll\r\n"
    _replies(conn, b"334 UGFzc3dvcmQ6\r\n")
    conn.send_auth_response("ZnVuc210cA==")
    [done] = _replies(conn, b"235 2.0.0 OK Authenticated\r\n")
    assert done.command == "AUTH"
    assert done.reply.status == "2.0.0"
    assert conn.waiting_for == ()


def test_sasl_line_breaks_are_refused() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_auth_response("abc\r\nMAIL FROM:<x>")


def test_raw_lines_are_kept_as_received() -> None:
    conn = ClientConnection()
    _replies(conn, b"220 mx\r\n")
    conn.send_command("EHLO", "me")
    [reply] = _replies(conn, b"250-mx Hello me\r\n250-2.0.0 PIPELINING\r\n250 SIZE 10\r\n")
    assert reply.raw == ("250-mx Hello me", "250-2.0.0 PIPELINING", "250 SIZE 10")
    assert conn.supports("SIZE")
