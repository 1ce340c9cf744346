"""``ClientConnection`` additions for ``petrel send``: SASL lines and raw reply lines."""

from __future__ import annotations

import pytest

from petrel.smtp import NEED_DATA, ClientConnection, LocalProtocolError, ServerReply


def _replies(conn: ClientConnection, data: bytes) -> list[ServerReply]:
    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, ServerReply)
        out.append(event)
    return out


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
