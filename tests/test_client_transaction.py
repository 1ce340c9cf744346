"""The client side's sequence rules (``ClientConnection``) and ``ClientTransaction``,
sans-IO: scripted reply bytes, or the real ``ServerConnection`` through smtp_driver."""

from __future__ import annotations

import pytest

from petrel.smtp import (
    NEED_DATA,
    ClientConnection,
    ClientState,
    ClientTransaction,
    Extensions,
    LocalProtocolError,
    MailFrom,
    Rcpt,
    RcptTo,
    ServerReply,
    reply,
)
from smtp_driver import Client as ServerDriver
from smtp_driver import client_replies as _replies


def _ready(extensions: str = "PIPELINING", *, lmtp: bool = False) -> ClientConnection:
    """A client that got its greeting and a 250 to EHLO (LHLO) offering ``extensions``."""
    conn = ClientConnection(lmtp=lmtp)
    _replies(conn, b"220 mx.test ESMTP\r\n")
    conn.send_command("LHLO" if lmtp else "EHLO", "me.test")
    keywords = "".join(f"250-{k}\r\n" for k in extensions.split()).encode()
    _replies(conn, b"250-mx.test\r\n" + keywords + b"250 HELP\r\n")
    assert conn.state is ClientState.READY
    return conn


# -- sequence rules ---------------------------------------------------------------------------


def test_data_before_mail_is_refused() -> None:
    conn = _ready()
    for verb in ("DATA", "RCPT"):
        with pytest.raises(LocalProtocolError, match="out of order"):
            conn.send_command(verb, "TO:<a@x.test>" if verb == "RCPT" else "")
    with pytest.raises(LocalProtocolError):
        conn.send_bdat(b"x", last=True)
    assert conn.waiting_for == ()  # nothing refused was counted as sent
    assert conn.state is ClientState.READY


def test_nothing_before_the_greeting_and_no_mail_before_ehlo() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError, match="greeting"):
        conn.send_command("EHLO", "me.test")
    _replies(conn, b"220 mx.test\r\n")
    with pytest.raises(LocalProtocolError, match="HELO/EHLO"):
        conn.send_command("MAIL", "FROM:<a@x.test>")
    conn.send_command("EHLO", "me.test")
    with pytest.raises(LocalProtocolError, match="reply to HELO/EHLO"):
        conn.send_command("MAIL", "FROM:<a@x.test>")  # EHLO ends a pipelined group
    [refused] = _replies(conn, b"502 5.5.1 no EHLO here\r\n")
    assert refused.reply.code == 502 and conn.state is ClientState.GREETED
    conn.send_command("HELO", "me.test")
    _replies(conn, b"250 mx.test\r\n")
    conn.send_command("MAIL", "FROM:<a@x.test>")
    assert conn.state is ClientState.MAIL


def test_pipelined_group_is_judged_by_what_was_sent() -> None:
    conn = _ready()
    conn.send_command("MAIL", "FROM:<a@x.test>")
    conn.send_command("RCPT", "TO:<b@y.test>")
    conn.send_command("DATA")  # before any reply: allowed, MAIL and RCPT were sent
    with pytest.raises(LocalProtocolError, match="reply to DATA"):
        conn.send_command("RSET")  # DATA is the last command of a group (RFC 2920)
    with pytest.raises(LocalProtocolError, match="354"):
        conn.send_data(b"too early")
    _replies(conn, b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
    assert conn.state is ClientState.TEXT
    with pytest.raises(LocalProtocolError, match="text is due"):
        conn.send_command("MAIL", "FROM:<a@x.test>")
    conn.send_data(b"hi")
    assert conn.state is ClientState.READY and conn.waiting_for == ("END",)


def test_replies_already_in_refine_the_rules() -> None:
    conn = _ready()
    conn.send_command("MAIL", "FROM:<a@x.test>")
    _replies(conn, b"550 5.7.1 no\r\n")
    assert conn.state is ClientState.READY  # no transaction at the server
    with pytest.raises(LocalProtocolError, match="send MAIL first"):
        conn.send_command("RCPT", "TO:<b@y.test>")
    conn.send_command("MAIL", "FROM:<c@x.test>")
    conn.send_command("RCPT", "TO:<b@y.test>")
    _replies(conn, b"250 ok\r\n550 5.1.1 unknown\r\n")
    with pytest.raises(LocalProtocolError, match="every RCPT was refused"):
        conn.send_command("DATA")
    with pytest.raises(LocalProtocolError, match="transaction is open"):
        conn.send_command("MAIL", "FROM:<c@x.test>")  # nested MAIL: RSET first
    conn.send_command("RSET")
    conn.send_command("MAIL", "FROM:<c@x.test>")


def test_refused_data_leaves_the_transaction_open() -> None:
    conn = _ready()
    for verb, arg in (("MAIL", "FROM:<a@x.test>"), ("RCPT", "TO:<b@y.test>"), ("DATA", "")):
        conn.send_command(verb, arg)
    _replies(conn, b"250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n")
    assert conn.state is ClientState.RCPT
    with pytest.raises(LocalProtocolError):
        conn.send_command("MAIL", "FROM:<a@x.test>")
    conn.send_command("QUIT")
    with pytest.raises(LocalProtocolError, match="QUIT was sent"):
        conn.send_command("NOOP")


def test_starttls_needs_ehlo_again() -> None:
    conn = _ready("PIPELINING STARTTLS")
    conn.send_command("STARTTLS")
    _replies(conn, b"220 2.0.0 go ahead\r\n")
    assert conn.state is ClientState.TLS
    conn.tls_established()
    with pytest.raises(LocalProtocolError, match="HELO/EHLO"):
        conn.send_command("MAIL", "FROM:<a@x.test>")
    with pytest.raises(LocalProtocolError):
        conn.tls_established()  # only once, after a 220 to STARTTLS


# -- ClientTransaction ----------------------------------------------------------------------


def _run(txn: ClientTransaction, server: ServerDriver) -> list[bytes]:
    """Drive ``txn`` against the real server core; returns each write."""
    writes = []
    while not txn.done:
        wire = b"".join(txn.commands())
        if txn.text_due:
            wire += txn.send_text()
        if wire:
            writes.append(wire)
            txn.conn.receive_data(server.send(wire))
        while not txn.done and (event := txn.conn.next_event()) is not NEED_DATA:
            assert isinstance(event, ServerReply)
            txn.receive(event)
    return writes


def _against(server: ServerDriver, *, lmtp: bool = False) -> ClientConnection:
    conn = ClientConnection(lmtp=lmtp)
    _replies(conn, server.greeting)
    _replies(conn, server.send(conn.send_command("LHLO" if lmtp else "EHLO", "me.test")))
    return conn


def _refuse_bad(event: Rcpt) -> object:
    if str(event.recipient).startswith("bad"):
        return reply(550, "5.1.1", "User unknown")
    return reply(250, "2.1.5", "ok")


@pytest.mark.parametrize("pipelining", [True, False])
def test_transaction_against_the_server_core(pipelining: bool) -> None:
    server = ServerDriver(policy={Rcpt: _refuse_bad})
    conn = _against(server)
    mail = MailFrom("a@x.test", size=12, body="8BITMIME", ret="HDRS", envid="id 1")
    rcpts = [RcptTo("ok@y.test", ("SUCCESS",), "rfc822;o+k@y.test"), RcptTo("bad@y.test")]
    txn = ClientTransaction(conn, mail, rcpts, b".dot\r\nline\r\n", pipelining=pipelining)
    assert txn.mail_argument == "FROM:<a@x.test> SIZE=12 BODY=8BITMIME RET=HDRS ENVID=id+201"
    assert txn.rcpt_arguments[0] == "TO:<ok@y.test> NOTIFY=SUCCESS ORCPT=rfc822;o+2Bk@y.test"
    writes = _run(txn, server)
    # Pipelined: MAIL, RCPT, RCPT, DATA in one write, then the text; else one by one.
    assert len(writes) == (2 if pipelining else 5)
    assert server.data == b".dot\r\nline\r\n"
    ok, bad = txn.outcomes
    assert ok is not None and bad is not None
    assert (ok.ok, ok.stage, ok.reply.code) == (True, "end of DATA", 250)
    assert (bad.ok, bad.stage, bad.reply.status) == (False, "RCPT TO", "5.1.1")
    assert txn.accepted == [0] and not txn.needs_reset


def test_parameters_the_server_lacks_are_dropped_and_named() -> None:
    server = ServerDriver(
        extensions=Extensions(size=None, dsn=False, eightbitmime=False, deliverby=None)
    )
    conn = _against(server)
    mail = MailFrom("a@x.test", size=1, body="8BITMIME", ret="FULL", by=(60, "R"))
    txn = ClientTransaction(conn, mail, [RcptTo("b@y.test", ("NEVER",), "rfc822;b@y.test")])
    assert txn.mail_argument == "FROM:<a@x.test>"
    assert txn.rcpt_arguments == ["TO:<b@y.test>"]
    assert txn.dropped == [
        ("SIZE", "SIZE="),
        ("8BITMIME", "BODY=8BITMIME"),
        ("DSN", "RET/ENVID"),
        ("DELIVERBY", "BY="),
        ("DSN", "NOTIFY"),
        ("DSN", "ORCPT"),
    ]


def test_lmtp_per_recipient_outcomes() -> None:
    conn = _ready(lmtp=True)
    rcpts = [RcptTo("a@box.test"), RcptTo("gone@box.test"), RcptTo("full@box.test")]
    txn = ClientTransaction(conn, MailFrom("s@x.test"), rcpts, b"hi\r\n")
    txn.commands()  # MAIL, RCPT×3, DATA in one group
    for event in _replies(conn, b"250 ok\r\n250 ok\r\n550 5.1.1 gone\r\n250 ok\r\n354 go\r\n"):
        txn.receive(event)
    assert txn.text_due and txn.send_text() == b"hi\r\n.\r\n"
    assert conn.waiting_for == ("END", "END")  # one per accepted recipient
    for event in _replies(conn, b"250 2.0.0 a delivered\r\n452 4.2.2 full mailbox\r\n"):
        txn.receive(event)
    assert txn.done
    got = [(o.stage, o.reply.code) for o in txn.outcomes if o is not None]
    assert got == [("end of DATA", 250), ("RCPT TO", 550), ("end of DATA", 452)]


def test_354_after_every_rcpt_was_refused_gets_an_empty_text() -> None:
    conn = _ready()
    txn = ClientTransaction(conn, MailFrom("s@x.test"), [RcptTo("a@y.test")], b"secret text")
    assert b"".join(txn.commands()).endswith(b"DATA\r\n")
    for event in _replies(conn, b"250 ok\r\n550 5.1.1 no\r\n354 go ahead anyway\r\n"):
        txn.receive(event)
    assert txn.text_due
    assert txn.send_text() == b".\r\n"  # ends the DATA, delivers nothing
    [end] = _replies(conn, b"554 5.5.1 no valid recipients\r\n")
    txn.receive(end)
    assert txn.done and not txn.text_sent and txn.accepted == []
    [outcome] = txn.outcomes
    assert outcome is not None and (outcome.stage, outcome.reply.code) == ("RCPT TO", 550)
    assert not txn.needs_reset  # the empty text ended the transaction at the server


def test_pipelined_mail_refusal_settles_everyone_and_needs_reset() -> None:
    conn = _ready()
    txn = ClientTransaction(conn, MailFrom("s@x.test"), [RcptTo("a@y.test"), RcptTo("b@y.test")])
    txn.commands()
    for event in _replies(conn, b"550 5.7.1 sender\r\n503 5.5.1 no\r\n503 no\r\n554 no\r\n"):
        txn.receive(event)
    assert txn.done and txn.needs_reset
    assert {(o.stage, o.reply.code) for o in txn.outcomes if o} == {("MAIL FROM", 550)}


def test_unpipelined_stops_after_every_rcpt_refused() -> None:
    conn = _ready("SIZE")  # no PIPELINING
    txn = ClientTransaction(conn, MailFrom("s@x.test"), [RcptTo("a@y.test")], pipelining=True)
    assert not txn.pipelining
    assert txn.commands() == [b"MAIL FROM:<s@x.test>\r\n"]
    assert txn.commands() == []  # waiting for the reply
    [mail] = _replies(conn, b"250 ok\r\n")
    txn.receive(mail)
    assert txn.commands() == [b"RCPT TO:<a@y.test>\r\n"]
    [rcpt] = _replies(conn, b"450 4.2.0 later\r\n")
    txn.receive(rcpt)
    assert txn.done and txn.needs_reset and conn.waiting_for == ()  # no DATA was made


def test_stop_after_rcpt_sends_no_data() -> None:
    conn = _ready()
    txn = ClientTransaction(conn, MailFrom("s@x.test"), [RcptTo("a@y.test")], stop_after="RCPT")
    assert b"DATA" not in b"".join(txn.commands())
    for event in _replies(conn, b"250 ok\r\n250 ok\r\n"):
        txn.receive(event)
    assert txn.done and txn.needs_reset


def test_bdat_sends_the_text_as_one_last_chunk() -> None:
    server = ServerDriver()
    conn = _against(server)
    txn = ClientTransaction(
        conn, MailFrom("s@x.test", body="BINARYMIME"), [RcptTo("a@y.test")], b"\x00bin", bdat=True
    )
    writes = _run(txn, server)
    assert b"DATA" not in writes[0] and writes[-1] == b"BDAT 4 LAST\r\n\x00bin"
    [outcome] = txn.outcomes
    assert outcome is not None and outcome.ok and outcome.stage == "end of DATA"
