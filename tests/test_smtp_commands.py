"""The sans-IO core, command by command: wire texts, sequence rules, parameters, limits.

Every test talks to ``petrel.smtp.ServerConnection`` only through bytes, events and
replies, answered by the small ``Client`` driver of ``smtp_driver`` with a fixed, simple policy.
"""

from __future__ import annotations

import base64

import pytest

from petrel.smtp import (
    NEED_DATA,
    PAUSED,
    Address,
    AddressError,
    AuthChallenge,
    AuthCredentials,
    AuthLookup,
    AuthOutcome,
    BadCommand,
    ConnectionClosed,
    Data,
    DataChunk,
    Ehlo,
    EndOfData,
    Etrn,
    Event,
    Expn,
    Extensions,
    Help,
    LocalProtocolError,
    Mail,
    Rcpt,
    Reply,
    ServerConnection,
    StartTls,
    State,
    Verb,
    Vrfy,
    parse_path,
    reply,
)
from petrel.smtp import replies as r
from smtp_driver import DATE, HOST, PASSWORD, USER, Client, in_rcpt, ready, reply_lines
from test_scram_vector import client_final

# -- the classic sessions (shared/seeds) -----------------------------------------------


def run_transcript(text: str, **kwargs: object) -> Client:
    """Play ``C:``/``S:`` lines: each run of C lines is fed at once, S lines must follow."""
    client = Client(**kwargs)
    got = reply_lines(client.greeting)
    expected: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            got.extend(reply_lines(client.send("".join(p + "\r\n" for p in pending).encode())))
            pending.clear()

    for raw in text.strip("\n").splitlines():
        tag, body = raw[:2], raw[3:]
        if tag == "C:":
            pending.append(body)
        else:
            assert tag == "S:", raw
            flush()
            expected.append(body)
    flush()
    assert got == expected
    return client


def accept_any(event: Event) -> Reply:
    """AUTH as in the seed: any PLAIN/LOGIN credentials are OK."""
    assert isinstance(event, AuthCredentials)
    return reply(235, "2.0.0", "OK Authenticated")


SEED_AUTH_SESSION = """\
S: 220 smtp.example.com ESMTP Petrel; Thu, 27 Mar 2008 23:14:59 -0700
C: EHLO wheelersoftware.com
S: 250-smtp.example.com Hello wheelersoftware.com [204.13.10.15], pleased to meet you
S: 250-ENHANCEDSTATUSCODES
S: 250-PIPELINING
S: 250-EXPN
S: 250-VERB
S: 250-8BITMIME
S: 250-SIZE 20000000
S: 250-DSN
S: 250-ETRN
S: 250-AUTH LOGIN PLAIN
S: 250-STARTTLS
S: 250-DELIVERBY 60
S: 250 HELP
C: AUTH LOGIN
S: 334 VXNlcm5hbWU6
C: d2lsbGll
S: 334 UGFzc3dvcmQ6
C: ZnVuc210cA==
S: 235 2.0.0 OK Authenticated
C: MAIL FROM:<darth.vader@deathstar.com>
S: 250 2.1.0 <darth.vader@deathstar.com>... Sender ok
C: RCPT TO:<willie@example.com>
S: 250 2.1.5 <willie@example.com>... Recipient ok
C: DATA
S: 354 Enter mail, end with "." on a line by itself
C: Date: Thu, 27 Mar 2008 23:12:49 -0700 (MST)
C: From: darth.vader@deathstar.com
C: To: willie@example.com
C: Subject: Great article
C:
C: Hi Willie,
C: I enjoyed your article on TCP/IP-based application protocols.
C: Join me, and together we can rule the galaxy as father and son.
C: Darth Vader
C: .
S: 250 2.0.0 m2S6ExD6029743 Message accepted for delivery
C: QUIT
S: 221 2.0.0 smtp.example.com closing connection
"""

SEED_HELO_SESSION = """\
S: 220 some_mailserver.net ESMTP Petrel; Thu, 27 Mar 2008 23:14:59 -0700
C: helo localhost.localdomain
S: 250 some_mailserver.net Hello localhost.localdomain [192.0.2.1], pleased to meet you
C: MAIL From:myaddress@mydomain.com
S: 250 2.1.0 <myaddress@mydomain.com>... Sender ok
C: RCPT To:fred@somedomain.com
S: 250 2.1.5 <fred@somedomain.com>... Recipient ok
C: RCPT To:freds_boss@somedomain.com
S: 250 2.1.5 <freds_boss@somedomain.com>... Recipient ok
C: DATA
S: 354 Enter mail, end with "." on a line by itself
C: Subject: I need the sales figures
C: CC: freds_boss@somedomain.com
C:
C: Hello Fred, can you call me?
C: .
S: 250 2.0.0 Q Message accepted for delivery
C: QUIT
S: 221 2.0.0 some_mailserver.net closing connection
"""

SEED_TELNET_SESSION = """\
S: 220 smtp.example.com ESMTP Petrel; Thu, 27 Mar 2008 23:14:59 -0700
C: HELO
S: 501 5.0.0 HELO requires domain address
C: HELO user123.example.com
S: 250 smtp.example.com Hello user123.example.com [10.0.0.100], pleased to meet you
C: MAIL FROM: user123@example.com
S: 250 2.1.0 <user123@example.com>... Sender ok
C: RCPT TO: test@example.com
S: 250 2.1.5 <test@example.com>... Recipient ok
C: DATA
S: 354 Enter mail, end with "." on a line by itself
C: Hello
C: .
S: 250 2.0.0 MAA31024 Message accepted for delivery
C: QUIT
S: 221 2.0.0 smtp.example.com closing connection
"""


def test_seed_session_with_auth_login() -> None:
    client = run_transcript(
        SEED_AUTH_SESSION,
        host="smtp.example.com",
        ip="204.13.10.15",
        queue_id="m2S6ExD6029743",
        policy={AuthCredentials: accept_any},
        extensions=Extensions(
            auth=("LOGIN", "PLAIN"), starttls=True, smtputf8=False, chunking=False
        ),
    )
    assert client.conn.state is State.CLOSED
    # The core ran LOGIN itself: two challenges it built, then the decoded credentials.
    assert [e.reply for e in client.of(AuthChallenge)] == [  # type: ignore[attr-defined]
        reply(334, None, "VXNlcm5hbWU6"),
        reply(334, None, "UGFzc3dvcmQ6"),
    ]
    assert client.of(AuthCredentials) == [AuthCredentials("LOGIN", "", "willie", "funsmtp")]
    assert client.data == (
        b"Date: Thu, 27 Mar 2008 23:12:49 -0700 (MST)\r\n"
        b"From: darth.vader@deathstar.com\r\n"
        b"To: willie@example.com\r\n"
        b"Subject: Great article\r\n"
        b"\r\n"
        b"Hi Willie,\r\n"
        b"I enjoyed your article on TCP/IP-based application protocols.\r\n"
        b"Join me, and together we can rule the galaxy as father and son.\r\n"
        b"Darth Vader\r\n"
    )
    (end,) = client.of(EndOfData)
    assert end == EndOfData(len(client.data))


def test_seed_session_helo_lenient_paths_two_recipients() -> None:
    client = run_transcript(SEED_HELO_SESSION, host="some_mailserver.net")
    (mail,) = client.of(Mail)
    assert mail == Mail(Address("myaddress", "mydomain.com"), mail.params)
    assert [e.recipient for e in client.of(Rcpt)] == [
        Address("fred", "somedomain.com"),
        Address("freds_boss", "somedomain.com"),
    ]
    assert client.data == (
        b"Subject: I need the sales figures\r\nCC: freds_boss@somedomain.com\r\n"
        b"\r\nHello Fred, can you call me?\r\n"
    )


def test_seed_session_helo_without_domain_then_space_before_path() -> None:
    client = run_transcript(
        SEED_TELNET_SESSION, host="smtp.example.com", ip="10.0.0.100", queue_id="MAA31024"
    )
    assert client.data == b"Hello\r\n"
    assert client.conn.errors == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(SEED_HELO_SESSION, id="helo-session"),
        pytest.param(SEED_TELNET_SESSION, id="telnet-session"),
    ],
)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_seed_session_pipelined_gives_same_replies(text: str, split: str) -> None:
    client_lines = [line[3:] for line in text.splitlines() if line.startswith("C:")]
    expected = [line[3:] for line in text.splitlines() if line.startswith("S:")][1:]
    host = text.split()[2]
    stream = "".join(line + "\r\n" for line in client_lines).encode()
    client = Client(host=host, ip="10.0.0.100" if "10.0.0.100" in text else "192.0.2.1")
    if split == "whole":
        client.send(stream)
    else:
        for i in range(len(stream)):
            client.send(stream[i : i + 1])
    got = reply_lines(client.out)
    # Queue ids differ from the transcript; everything else is byte-identical.
    assert [g.split()[:2] for g in got] == [e.split()[:2] for e in expected]
    assert len(got) == len(expected)


def test_greeting_and_ehlo_wire_text() -> None:
    client = Client()
    assert client.greeting == b"220 mx.example.test ESMTP Petrel; " + DATE.encode() + b"\r\n"
    lines = client.lines("EHLO client.example")
    assert lines[0] == "250-mx.example.test Hello client.example [192.0.2.1], pleased to meet you"
    assert lines[1:] == [
        "250-ENHANCEDSTATUSCODES",
        "250-PIPELINING",
        "250-EXPN",
        "250-VERB",
        "250-8BITMIME",
        "250-SIZE 20000000",
        "250-DSN",
        "250-ETRN",
        "250-DELIVERBY 60",
        "250-SMTPUTF8",
        "250-CHUNKING",
        "250-BINARYMIME",
        "250 HELP",
    ]
    assert client.conn.esmtp and client.conn.helo == "client.example"


def test_greeting_refusal_closes() -> None:
    conn = ServerConnection(HOST)
    assert conn.next_event() is PAUSED
    conn.send(reply(554, "5.3.2", "No SMTP service here"))
    assert conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("HELO", "501 5.0.0 HELO requires domain address"),
        ("HELO   ", "501 5.0.0 HELO requires domain address"),
        ("EHLO", "501 5.0.0 EHLO requires domain address"),
        ("helo x.example", "250 mx.example.test Hello x.example [192.0.2.1], pleased to meet you"),
    ],
)
def test_helo_ehlo_arguments(command: str, expected: str) -> None:
    assert Client().last(command) == expected


# -- paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "address"),
    [
        pytest.param("MAIL FROM:<a@example.org>", "a@example.org", id="strict"),
        pytest.param("mail from:<a@example.org>", "a@example.org", id="lowercase"),
        pytest.param("MAIL From:user@domain.example", "user@domain.example", id="no-brackets"),
        pytest.param("MAIL FROM: user@x.example", "user@x.example", id="space-no-brackets"),
        pytest.param("MAIL FROM: <a@example.org>", "a@example.org", id="space-brackets"),
        pytest.param("MAIL FROM : <a@example.org>", "a@example.org", id="space-before-colon"),
        pytest.param("MAIL  FROM:<a@example.org>", "a@example.org", id="two-spaces"),
    ],
)
def test_mail_lenient_paths(command: str, address: str) -> None:
    assert ready().last(command) == f"250 2.1.0 <{address}>... Sender ok"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("MAIL FROM:user@domain.example", id="no-brackets"),
        pytest.param("MAIL FROM: <a@example.org>", id="space-after-colon"),
        pytest.param("MAIL FROM : <a@example.org>", id="space-before-colon"),
        pytest.param("MAIL FROM:", id="empty"),
    ],
)
def test_strict_paths_refuse_unbracketed(command: str) -> None:
    line = ready(strict_paths=True).last(command)
    assert line.startswith("501 5.")


def test_strict_paths_accept_bracketed_and_refuse_bare_rcpt() -> None:
    client = ready(strict_paths=True)
    assert client.last("MAIL FROM:<a@example.org>").startswith("250 2.1.0")
    assert client.last("RCPT TO:b@example.net").startswith("501 5.1.3")
    assert client.last("RCPT TO:<b@example.net>").startswith("250 2.1.5")


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        pytest.param("<john@example.com>", "john", "example.com", id="plain"),
        pytest.param('<"john doe"@example.com>', '"john doe"', "example.com", id="quoted-space"),
        pytest.param('<"a\\"b"@x>', '"a\\"b"', "x", id="quoted-pair"),
        pytest.param('<"a>b"@x>', '"a>b"', "x", id="quoted-angle"),
        pytest.param("<Postmaster>", "Postmaster", "", id="postmaster"),
        pytest.param("<@a.test,@b.test:user@c.test>", "user", "c.test", id="source-route"),
        pytest.param("<@a.test:user@c.test>", "user", "c.test", id="one-hop-route"),
        pytest.param("<u@[127.0.0.1]>", "u", "[127.0.0.1]", id="ipv4-literal"),
        pytest.param("<u@[IPv6:::1]>", "u", "[IPv6:::1]", id="ipv6-literal"),
        pytest.param("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]", id="ipv6-full"),
        pytest.param(
            "<first.last+tag@sub.example.com>", "first.last+tag", "sub.example.com", id="dot-atom"
        ),
        pytest.param("<用户@例子.测试>", "用户", "例子.测试", id="utf8"),
    ],
)
def test_parse_path_valid(path: str, local: str, domain: str) -> None:
    assert parse_path(path) == Address(local, domain)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("<a@b", id="unclosed"),
        pytest.param("a@b", id="no-brackets"),
        pytest.param("<a b@c>", id="space-in-local"),
        pytest.param("<a@-b.c>", id="leading-hyphen"),
        pytest.param("<a@b-.c>", id="trailing-hyphen"),
        pytest.param("<a@b..c>", id="empty-label"),
        pytest.param("<.a@b>", id="leading-dot"),
        pytest.param("<a..b@c>", id="double-dot"),
        pytest.param("<a@>", id="no-domain"),
        pytest.param("<@b>", id="no-local"),
        pytest.param("<a>", id="no-at"),
        pytest.param("<@a:b>", id="route-no-mailbox"),
        pytest.param("<u@[300.1.1.1]>", id="bad-ipv4"),
        pytest.param("<u@[IPv6:zz::1]>", id="bad-ipv6"),
        pytest.param("<u@[IPv6:1:2:3:4:5:6:7:8:9]>", id="long-ipv6"),
        pytest.param("<" + "a" * 251 + "@b.c>", id="path-over-256"),
        pytest.param("<a@" + "b" * 64 + ".c>", id="label-over-63"),
    ],
)
def test_parse_path_invalid(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path)


def test_parse_path_null_and_address_helpers() -> None:
    assert parse_path("<>") is None
    quoted = parse_path('<"a\\"b c"@x>')
    assert quoted is not None and quoted.mailbox == 'a"b c' and quoted.is_quoted
    pm = parse_path("<postmaster>")
    assert pm is not None and pm.is_bare_postmaster and str(pm) == "postmaster"
    lit = parse_path("<u@[127.0.0.1]>")
    assert lit is not None and lit.is_address_literal and str(lit) == "u@[127.0.0.1]"


def test_path_through_the_wire_keeps_quoted_local_part_and_drops_route() -> None:
    client = ready()
    client.lines(
        'MAIL FROM:<"john doe"@example.com> SIZE=10',
        "RCPT TO:<@a.test,@b.test:user@c.test>",
        "RCPT TO:<Postmaster>",
        "RCPT TO:<u@[IPv6:::1]>",
    )
    (mail,) = client.of(Mail)
    assert mail.sender == Address('"john doe"', "example.com") and mail.params.size == 10
    assert [e.recipient for e in client.of(Rcpt)] == [
        Address("user", "c.test"),
        Address("Postmaster", ""),
        Address("u", "[IPv6:::1]"),
    ]


def test_bare_postmaster_is_not_a_sender() -> None:
    client = ready()
    assert client.last("MAIL FROM:<Postmaster>") == (
        "501 5.1.7 Bad sender address syntax: no domain"
    )
    assert client.last("MAIL FROM:<postmaster@example.org>").startswith("250 2.1.0")


def test_null_sender_allowed_null_recipient_refused() -> None:
    client = ready()
    assert client.last("MAIL FROM:<>") == "250 2.1.0 <>... Sender ok"
    assert client.of(Mail)[0].sender is None
    assert client.last("RCPT TO:<>") == "501 5.1.3 The null path is not a recipient"
    assert client.of(Rcpt) == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("MAIL FROM:<a@b>junk", "501 5.1.7"),
        ("MAIL FROM:<a b@c>", "501 5.1.7"),
        ("MAIL FROM:<a@b", "501 5.1.7"),
        ("MAIL TO:<a@b>", "501 5.5.4"),
        ("MAIL", "501 5.5.4"),
        ("MAIL FROM:", "501 5.1.7"),
    ],
)
def test_mail_syntax_errors(command: str, expected: str) -> None:
    assert ready().last(command).startswith(expected + " ")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("RCPT FROM:<a@b>", "501 5.5.4"),
        ("RCPT TO:<a@b", "501 5.1.3"),
        ("RCPT", "501 5.5.4"),
    ],
)
def test_rcpt_syntax_errors(command: str, expected: str) -> None:
    client = ready()
    client.lines("MAIL FROM:<a@b>")
    assert client.last(command).startswith(expected + " ")


# -- sequence -------------------------------------------------------------------------


def _refuse_rcpt(event: Event) -> Reply:
    return reply(550, "5.1.1", "User unknown")


@pytest.mark.parametrize(
    ("setup", "command", "expected"),
    [
        pytest.param(
            [], "MAIL FROM:<a@b>", "503 5.5.1 Polite people say HELO first", id="mail-before-helo"
        ),
        pytest.param(
            [], "RCPT TO:<a@b>", "503 5.5.1 Polite people say HELO first", id="rcpt-before-helo"
        ),
        pytest.param([], "DATA", "503 5.5.1 Polite people say HELO first", id="data-before-helo"),
        pytest.param(
            [], "ETRN example.org", "503 5.5.1 Polite people say HELO first", id="etrn-before-helo"
        ),
        pytest.param(
            ["EHLO c"], "RCPT TO:<a@b>", "503 5.5.1 Need MAIL before RCPT", id="rcpt-before-mail"
        ),
        pytest.param(["EHLO c"], "DATA", "503 5.5.1 Need MAIL command", id="data-before-mail"),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>"],
            "MAIL FROM:<c@d>",
            "503 5.5.1 Sender already specified",
            id="nested-mail",
        ),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>"],
            "DATA",
            "503 5.5.1 Need RCPT (recipient)",
            id="data-before-rcpt",
        ),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>", "RCPT TO:<>"],
            "DATA",
            "554 5.5.1 Error: no valid recipients",
            id="data-after-bad-rcpt",
        ),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>", "RCPT TO:<c@d>"],
            "MAIL FROM:<c@d>",
            "503 5.5.1 Sender already specified",
            id="mail-after-rcpt",
        ),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>"],
            "ETRN example.org",
            "503 5.5.1 Mail transaction in progress",
            id="etrn-in-transaction",
        ),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>"],
            "STARTTLS",
            "503 5.5.1 Mail transaction in progress",
            id="starttls-in-transaction",
        ),
        pytest.param(
            ["EHLO c", "RSET"],
            "RCPT TO:<a@b>",
            "503 5.5.1 Need MAIL before RCPT",
            id="rcpt-after-rset",
        ),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "EHLO c"],
            "RCPT TO:<a@b>",
            "503 5.5.1 Need MAIL before RCPT",
            id="ehlo-resets",
        ),
        pytest.param(
            ["EHLO c", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "HELO c"],
            "DATA",
            "503 5.5.1 Need MAIL command",
            id="helo-resets",
        ),
    ],
)
def test_out_of_sequence(setup: list[str], command: str, expected: str) -> None:
    client = Client(extensions=Extensions(starttls=True))
    client.lines(*setup)
    state = client.conn.state
    assert client.last(command) == expected
    assert client.conn.state is state
    assert not client.of(Data)


def test_data_after_every_rcpt_refused_by_policy() -> None:
    client = ready(policy={Rcpt: _refuse_rcpt})
    client.lines("MAIL FROM:<a@b>", "RCPT TO:<x@y>", "RCPT TO:<z@y>")
    assert client.conn.state is State.MAIL
    assert client.last("DATA") == "554 5.5.1 Error: no valid recipients"
    assert not client.of(Data)


def test_auth_in_transaction_and_before_helo() -> None:
    ext = Extensions(auth=("PLAIN",))
    assert Client(extensions=ext).last("AUTH PLAIN") == "503 5.5.1 Polite people say HELO first"
    client = ready(extensions=ext)
    client.lines("MAIL FROM:<a@b>")
    assert client.last("AUTH PLAIN") == "503 5.5.1 Mail transaction in progress"


def test_rset_does_not_replace_helo() -> None:
    client = Client(extensions=Extensions(starttls=True))
    assert client.lines("RSET", "MAIL FROM:<a@b>") == [
        "250 2.0.0 OK",
        "503 5.5.1 Polite people say HELO first",
    ]
    assert client.conn.state is State.INIT
    client.lines("EHLO c", "STARTTLS")
    client.conn.tls_established()
    assert client.lines("RSET", "MAIL FROM:<a@b>")[-1] == "503 5.5.1 Polite people say HELO first"


def test_rset_ends_transaction() -> None:
    client = in_rcpt()
    assert client.last("RSET") == "250 2.0.0 OK"
    assert client.conn.state is State.READY and client.conn.recipients == 0
    assert client.last("RSET now") == "501 5.5.4 Syntax: RSET"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("FOO", "500 5.5.1 Command unrecognized"),
        ("", "500 5.5.1 Command unrecognized"),
        ("MAILFROM:<a@b>", "500 5.5.1 Command unrecognized"),
        ("MAIL\tFROM:<a@b>", "500 5.5.1 Command unrecognized"),
        ("maıl FROM:<a@b>", "500 5.5.1 Command unrecognized"),
        ("ſtarttls", "500 5.5.1 Command unrecognized"),
        ("ＮＯＯＰ", "500 5.5.1 Command unrecognized"),
        ("QUIT now", "501 5.5.4 Syntax: QUIT"),
        ("DATA now", "501 5.5.4 Syntax: DATA"),
    ],
)
def test_unknown_and_malformed_commands(command: str, expected: str) -> None:
    client = in_rcpt()
    assert client.last(command) == expected
    assert client.conn.state is State.RCPT


def test_noop_accepts_an_argument() -> None:
    assert ready().last("NOOP anything at all") == "250 2.0.0 OK"


# -- ESMTP parameters ---------------------------------------------------------------------


def mail_with(params: str, **kwargs: object) -> tuple[str, Mail | None]:
    client = ready(**kwargs)
    line = client.last(f"MAIL FROM:<a@example.org> {params}")
    mails = client.of(Mail)
    return line, (mails[0] if mails else None)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ("SIZE=20000000", "size", 20000000),
        ("SIZE=0", "size", 0),
        ("size=12", "size", 12),
        ("BODY=7BIT", "body", "7BIT"),
        ("BODY=8BITMIME", "body", "8BITMIME"),
        ("BODY=binarymime", "body", "BINARYMIME"),
        ("SMTPUTF8", "smtputf8", True),
        ("RET=FULL", "ret", "FULL"),
        ("RET=hdrs", "ret", "HDRS"),
        ("ENVID=QQ314159", "envid", "QQ314159"),
        ("ENVID=abc+2Bdef+3Dx", "envid", "abc+def=x"),
        ("ENVID=" + "e" * 100, "envid", "e" * 100),
        ("BY=120;R", "by", (120, "R")),
        ("BY=60;r", "by", (60, "R")),
        ("BY=3600;RT", "by", (3600, "RT")),
        ("BY=-5;N", "by", (-5, "N")),
        ("BY=0;N", "by", (0, "N")),
        ("BY=+10;nt", "by", (10, "NT")),
    ],
)
def test_mail_parameter_accepted(params: str, field: str, value: object) -> None:
    line, mail = mail_with(params)
    assert line == "250 2.1.0 <a@example.org>... Sender ok"
    assert mail is not None and getattr(mail.params, field) == value


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param("FOO=1", "555 5.5.4 Unsupported parameter: FOO", id="unknown"),
        pytest.param("X-FOO", "555 5.5.4 Unsupported parameter: X-FOO", id="unknown-flag"),
        pytest.param("SIZE=20000001", "552 5.3.4", id="size-too-big"),
        pytest.param("SIZE=abc", "501 5.5.4", id="size-alpha"),
        pytest.param("SIZE=-1", "501 5.5.4", id="size-negative"),
        pytest.param("SIZE", "501 5.5.4", id="size-no-value"),
        pytest.param("SIZE=", "501 5.5.4", id="size-empty"),
        pytest.param("SIZE=" + "9" * 21, "501 5.5.4", id="size-21-digits"),
        pytest.param("BODY=QUOTED", "501 5.5.4", id="body-unknown"),
        pytest.param("BODY", "501 5.5.4", id="body-no-value"),
        pytest.param("SMTPUTF8=yes", "501 5.5.4", id="smtputf8-value"),
        pytest.param("RET=ALL", "501 5.5.4", id="ret-bad"),
        pytest.param("ENVID=a+2", "501 5.5.4", id="envid-short-hex"),
        pytest.param("ENVID=a+2b", "501 5.5.4", id="envid-lowercase-hex"),
        pytest.param("ENVID=a+ZZ", "501 5.5.4", id="envid-bad-hex"),
        pytest.param("ENVID=" + "e" * 101, "501 5.5.4", id="envid-too-long"),
        pytest.param("AUTH=<>", "555 5.5.4 Unsupported parameter: AUTH", id="auth-unadvertised"),
        pytest.param("BY=abc", "501 5.5.4", id="by-syntax"),
        pytest.param("BY=60", "501 5.5.4", id="by-no-mode"),
        pytest.param("BY=60;X", "501 5.5.4", id="by-bad-mode"),
        pytest.param("BY=1234567890;N", "501 5.5.4", id="by-ten-digits"),
        pytest.param("BY=0;R", "501 5.5.4", id="by-zero-r"),
        pytest.param("BY=-5;R", "501 5.5.4", id="by-negative-r"),
        pytest.param("BY=30;R", "553 5.5.4", id="by-below-minimum"),
        pytest.param("SIZE=1 SIZE=2", "501 5.5.4 Duplicate parameter: SIZE", id="duplicate"),
        pytest.param("size=1 SIZE=1", "501 5.5.4 Duplicate parameter: SIZE", id="dup-case"),
        pytest.param("=1", "501 5.5.4", id="no-keyword"),
        pytest.param("-X=1", "501 5.5.4", id="bad-keyword"),
        pytest.param("ENVID=a=b", "501 5.5.4", id="equals-in-value"),
        pytest.param("SIZE=١٠", "501 5.5.4 Bad SIZE parameter", id="size-arabic-digits"),
        pytest.param("BY=٦٠;N", "501 5.5.4 Malformed BY parameter", id="by-arabic-digits"),
    ],
)
def test_mail_parameter_refused(params: str, expected: str) -> None:
    line, mail = mail_with(params)
    assert line.startswith(expected)
    assert mail is None


@pytest.mark.parametrize(
    ("params", "extensions"),
    [
        pytest.param("SIZE=10", Extensions(size=None), id="size-off"),
        pytest.param("BODY=8BITMIME", Extensions(eightbitmime=False), id="8bitmime-off"),
        pytest.param("SMTPUTF8", Extensions(smtputf8=False), id="smtputf8-off"),
        pytest.param("RET=FULL", Extensions(dsn=False), id="dsn-off-ret"),
        pytest.param("ENVID=x", Extensions(dsn=False), id="dsn-off-envid"),
        pytest.param("BY=120;R", Extensions(deliverby=None), id="deliverby-off"),
    ],
)
def test_mail_parameter_of_unadvertised_extension(params: str, extensions: Extensions) -> None:
    line, _ = mail_with(params, extensions=extensions)
    assert line.startswith("555 5.5.4 Unsupported parameter:")


@pytest.mark.parametrize(
    "extensions",
    [
        pytest.param(Extensions(binarymime=False), id="binarymime-off"),
        pytest.param(Extensions(chunking=False), id="chunking-off"),
    ],
)
def test_body_binarymime_needs_it_advertised(extensions: Extensions) -> None:
    assert "BINARYMIME" not in extensions.keywords()
    line, _ = mail_with("BODY=BINARYMIME", extensions=extensions)
    assert line.startswith("501 5.5.4")


def test_size_zero_means_no_limit() -> None:
    line, mail = mail_with("SIZE=999999999999", extensions=Extensions(size=0))
    assert line.startswith("250 ") and mail is not None


@pytest.mark.parametrize(
    ("value", "decoded"),
    [("<>", "<>"), ("user+40example.org", "user@example.org"), ("joe", "joe")],
)
def test_mail_auth_parameter(value: str, decoded: str) -> None:
    line, mail = mail_with(f"AUTH={value}", extensions=Extensions(auth=("PLAIN",)))
    assert line.startswith("250 ") and mail is not None and mail.params.auth == decoded


def test_mail_auth_parameter_bad_xtext() -> None:
    line, _ = mail_with("AUTH=a+zz", extensions=Extensions(auth=("PLAIN",)))
    assert line.startswith("501 5.5.4")


def rcpt_with(params: str, **kwargs: object) -> tuple[str, Rcpt | None]:
    client = ready(**kwargs)
    client.lines("MAIL FROM:<a@example.org>")
    line = client.last(f"RCPT TO:<b@example.net> {params}")
    rcpts = client.of(Rcpt)
    return line, (rcpts[0] if rcpts else None)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ("NOTIFY=NEVER", "notify", ("NEVER",)),
        ("NOTIFY=never", "notify", ("NEVER",)),
        ("NOTIFY=SUCCESS", "notify", ("SUCCESS",)),
        ("NOTIFY=SUCCESS,FAILURE,DELAY", "notify", ("SUCCESS", "FAILURE", "DELAY")),
        ("ORCPT=rfc822;a+2Bb@x", "orcpt", "rfc822;a+b@x"),
        ("ORCPT=rfc822;bob@example.net", "orcpt", "rfc822;bob@example.net"),
        ("ORCPT=utf-8;ü@x", "orcpt", "utf-8;ü@x"),
        ("NOTIFY=DELAY ORCPT=rfc822;c@d", "orcpt", "rfc822;c@d"),
    ],
)
def test_rcpt_parameter_accepted(params: str, field: str, value: object) -> None:
    line, rcpt = rcpt_with(params)
    assert line == "250 2.1.5 <b@example.net>... Recipient ok"
    assert rcpt is not None and getattr(rcpt.params, field) == value


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param(
            "NOTIFY=NEVER,SUCCESS", "501 5.5.4 NOTIFY=NEVER must stand alone", id="never-not-alone"
        ),
        pytest.param(
            "NOTIFY=FAILURE,NEVER", "501 5.5.4 NOTIFY=NEVER must stand alone", id="never-last"
        ),
        pytest.param("NOTIFY=SUCCESS,SUCCESS", "501 5.5.4", id="notify-dup-value"),
        pytest.param("NOTIFY=SUCCESS,,FAILURE", "501 5.5.4", id="notify-empty-item"),
        pytest.param("NOTIFY=ALWAYS", "501 5.5.4", id="notify-unknown"),
        pytest.param("NOTIFY", "501 5.5.4", id="notify-no-value"),
        pytest.param(
            "NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Duplicate parameter: NOTIFY", id="notify-twice"
        ),
        pytest.param("ORCPT=rfc822", "501 5.5.4", id="orcpt-no-type"),
        pytest.param("ORCPT=;a@b", "501 5.5.4", id="orcpt-empty-type"),
        pytest.param("ORCPT=rfc822;a+zz@b", "501 5.5.4", id="orcpt-bad-xtext"),
        pytest.param("ORCPT=rfc822;" + "a" * 501, "501 5.5.4", id="orcpt-too-long"),
        pytest.param("FOO=1", "555 5.5.4 Unsupported parameter: FOO", id="unknown"),
        pytest.param("SIZE=10", "555 5.5.4 Unsupported parameter: SIZE", id="mail-only-param"),
    ],
)
def test_rcpt_parameter_refused(params: str, expected: str) -> None:
    line, rcpt = rcpt_with(params)
    assert line.startswith(expected)
    assert rcpt is None


def test_rcpt_dsn_parameters_need_dsn() -> None:
    line, _ = rcpt_with("NOTIFY=NEVER", extensions=Extensions(dsn=False))
    assert line == "555 5.5.4 Unsupported parameter: NOTIFY"


def test_parameters_after_helo_are_refused() -> None:
    client = Client()
    client.lines("HELO c.example")
    assert client.last("MAIL FROM:<a@b> SIZE=10") == "555 5.5.4 Unsupported parameter: SIZE"
    assert client.last("MAIL FROM:<a@b> BODY=8BITMIME").startswith("555 5.5.4")
    assert client.last("MAIL FROM:<a@b>").startswith("250 ")
    assert client.last("RCPT TO:<c@d> NOTIFY=NEVER") == "555 5.5.4 Unsupported parameter: NOTIFY"
    assert client.last("RCPT TO:<c@d>").startswith("250 ")


def test_ehlo_after_helo_enables_parameters() -> None:
    client = Client()
    client.lines("HELO c.example", "EHLO c.example")
    assert client.last("MAIL FROM:<a@b> SIZE=10").startswith("250 ")


# -- SMTPUTF8 -------------------------------------------------------------------------


def test_non_ascii_sender_needs_smtputf8() -> None:
    client = ready()
    assert client.last("MAIL FROM:<José@example.org>") == (
        "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    )
    assert client.last("MAIL FROM:<José@example.org> SMTPUTF8").startswith("250 2.1.0")
    (mail,) = client.of(Mail)
    assert mail.sender == Address("José", "example.org") and mail.params.smtputf8
    assert client.last("RCPT TO:<用户@例子.测试>") == "250 2.1.5 <用户@例子.测试>... Recipient ok"


def test_non_ascii_recipient_needs_smtputf8_transaction() -> None:
    client = ready()
    client.lines("MAIL FROM:<a@example.org>")
    assert client.last("RCPT TO:<björn@example.net>") == (
        "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    )
    assert client.last("RCPT TO:<bjorn@exämple.net>").startswith("553 5.6.7")
    client.lines("RSET", "MAIL FROM:<a@example.org> SMTPUTF8")
    assert client.last("RCPT TO:<björn@example.net>").startswith("250 2.1.5")


def test_smtputf8_flag_does_not_outlive_the_transaction() -> None:
    client = ready()
    client.lines("MAIL FROM:<a@example.org> SMTPUTF8", "RSET", "MAIL FROM:<a@example.org>")
    assert client.last("RCPT TO:<björn@example.net>").startswith("553 5.6.7")


# -- limits ---------------------------------------------------------------------------


def test_too_many_recipients() -> None:
    client = ready(max_recipients=3)
    client.lines("MAIL FROM:<a@b>")
    lines = client.lines(*(f"RCPT TO:<r{i}@example.net>" for i in range(5)))
    assert [line[:9] for line in lines] == ["250 2.1.5"] * 3 + ["452 4.5.3"] * 2
    assert lines[-1] == "452 4.5.3 Too many recipients"
    assert len(client.of(Rcpt)) == 3
    # 4xx replies are not errors, and a new transaction starts counting afresh.
    assert client.conn.errors == 0
    client.lines("RSET", "MAIL FROM:<a@b>")
    assert client.last("RCPT TO:<x@y>").startswith("250 ")


def test_refused_recipients_do_not_count_against_the_limit() -> None:
    answers = iter([reply(550, "5.1.1", "no"), reply(550, "5.1.1", "no")])

    def policy(event: Event) -> Reply:
        assert isinstance(event, Rcpt)
        return next(answers, None) or r.recipient_ok(str(event.recipient))

    client = ready(max_recipients=2, policy={Rcpt: policy})
    client.lines("MAIL FROM:<a@b>")
    lines = client.lines(*(f"RCPT TO:<r{i}@example.net>" for i in range(5)))
    assert [line[:3] for line in lines] == ["550", "550", "250", "250", "452"]


def test_error_limit_closes_with_421() -> None:
    client = Client(max_errors=3)
    out = client.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\nQUIT\r\n")
    assert reply_lines(out) == [
        "500 5.5.1 Command unrecognized",
        "500 5.5.1 Command unrecognized",
        "500 5.5.1 Command unrecognized",
        "421 4.7.0 mx.example.test Too many errors, closing connection",
    ]
    assert client.conn.state is State.CLOSED
    assert client.conn.next_event() is PAUSED
    # A closed connection neither reads nor buffers anything more.
    client.conn.receive_data(b"NOOP\r\n" * 10000)
    assert client.conn.next_event() is PAUSED
    assert len(client.conn._buf) < 100


def test_error_limit_counts_5xx_only() -> None:
    client = ready(max_errors=2, max_recipients=1)
    client.lines("MAIL FROM:<a@b>", "RCPT TO:<c@d>")
    assert (
        client.lines("RCPT TO:<e@f>", "RCPT TO:<e@f>", "RCPT TO:<e@f>")
        == ["452 4.5.3 Too many recipients"] * 3
    )
    assert client.conn.state is State.RCPT
    assert client.lines("FOO", "FOO")[-1].startswith("421 4.7.0")


def test_junk_commands_past_the_limit_count_as_errors() -> None:
    """Like Postfix's smtpd_junk_command_limit: cheap commands cannot flood forever."""
    client = ready(max_junk=3, max_errors=2)
    assert client.lines("NOOP", "RSET", "NOOP") == ["250 2.0.0 OK"] * 3
    assert client.conn.errors == 0
    assert client.lines("NOOP") == ["250 2.0.0 OK"]  # the fourth: answered, and one error
    assert client.conn.errors == 1
    assert client.lines("RSET") == [
        "250 2.0.0 OK",
        "421 4.7.0 mx.example.test Too many errors, closing connection",
    ]
    assert client.conn.state is State.CLOSED


def test_an_accepted_message_starts_the_junk_count_again() -> None:
    client = ready(max_junk=2, max_errors=1)
    client.lines("NOOP", "NOOP", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
    assert client.replies(b"Subject: x\r\n\r\nhi\r\n.\r\n")[0].startswith("250 ")
    assert client.lines("RSET", "NOOP") == ["250 2.0.0 OK"] * 2
    assert client.conn.errors == 0 and client.conn.state is State.READY


def test_application_421_closes() -> None:
    client = ready(policy={Mail: lambda e: reply(421, "4.3.2", "Shutting down")})
    assert client.lines("MAIL FROM:<a@b>", "NOOP") == ["421 4.3.2 Shutting down"]
    assert client.conn.state is State.CLOSED


def test_unsolicited_421_closes() -> None:
    client = ready()
    out = client.conn.send(reply(421, "4.4.2", f"{HOST} Timeout"))
    assert out == b"421 4.4.2 mx.example.test Timeout\r\n"
    assert client.conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("length", "verb", "ok"),
    [
        (512, "NOOP", True),
        (513, "NOOP", False),
        (2048, "MAIL", True),
        (2049, "MAIL", False),
        (2048, "RCPT", True),
        (2049, "RCPT", False),
    ],
)
def test_command_line_length(length: int, verb: str, ok: bool) -> None:
    client = ready()
    if verb == "RCPT":
        client.lines("MAIL FROM:<a@b>")
    head = {"NOOP": "NOOP ", "MAIL": "MAIL FROM:<a@b>", "RCPT": "RCPT TO:<c@d>"}[verb]
    tail = "" if verb == "NOOP" else "SIZE=1" if verb == "MAIL" else "NOTIFY=NEVER"
    line = head + " " * (length - 2 - len(head) - len(tail)) + tail
    assert len(line) + 2 == length
    got = client.last(line)
    assert got.startswith("250 ") if ok else got == "500 5.5.2 Line too long"


def test_huge_line_without_newline_is_discarded_with_bounded_memory() -> None:
    client = ready()
    piece = b"X" * 1024
    for _ in range(100):
        assert client.send(piece) == b""
        assert len(client.conn._buf) <= 12288 + len(piece)
    assert reply_lines(client.send(b"\r\nNOOP\r\n")) == ["500 5.5.2 Line too long", "250 2.0.0 OK"]
    assert client.conn.errors == 1


def test_huge_line_in_one_read_gets_one_reply() -> None:
    client = ready()
    out = client.send(b"Y" * 100_000 + b"\r\nNOOP\r\n")
    assert reply_lines(out) == ["500 5.5.2 Line too long", "250 2.0.0 OK"]
    assert len(client.conn._buf) == 0


BARE = "500 5.5.2 Bare CR or LF in command line; lines must end in CRLF"


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        pytest.param(b"NOOP\n", BARE, id="bare-lf"),
        pytest.param(b"\n", BARE, id="lone-lf"),
        pytest.param(b"NO\rOP\r\n", BARE, id="bare-cr"),
        pytest.param(b"NOOP\r\r\n", BARE, id="cr-cr-lf"),
        pytest.param(b"NOOP\r", None, id="cr-at-end-waits"),
        pytest.param(b"NO\0OP\r\n", "500 5.5.2 NUL character in command line", id="nul"),
        pytest.param(
            b"NOOP \xff\xfe\r\n", "500 5.5.2 Command line is not valid UTF-8", id="bad-utf8"
        ),
    ],
)
def test_bad_bytes_in_command_line(wire: bytes, expected: str | None) -> None:
    client = ready()
    assert reply_lines(client.send(wire)) == ([expected] if expected else [])
    if expected is None:
        assert reply_lines(client.send(b"x\r\n")) == [BARE]
    assert client.last("NOOP") == "250 2.0.0 OK"


def test_bare_lf_cannot_smuggle_a_command() -> None:
    client = ready()
    out = client.send(b"MAIL FROM:<a@b>\nRCPT TO:<c@d>\r\n")
    assert reply_lines(out) == [
        "500 5.5.2 Bare CR or LF in command line; lines must end in CRLF",
        "503 5.5.1 Need MAIL before RCPT",
    ]
    assert not client.of(Mail)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        pytest.param(b"NOOP\n", ["250 2.0.0 OK"], id="bare-lf"),
        pytest.param(b"NOOP\nNOOP\r\nNOOP\n", ["250 2.0.0 OK"] * 3, id="mixed"),
        pytest.param(b"NO\rOP\n", [BARE], id="bare-cr"),
        pytest.param(b"NOOP\r\r\n", [BARE], id="cr-cr-lf"),
        pytest.param(b"NOOP\r", [], id="cr-at-end-waits"),
        pytest.param(b"NOOP " + b"x" * 505 + b"\n", ["250 2.0.0 OK"], id="512-with-crlf"),
        pytest.param(b"NOOP " + b"x" * 506 + b"\n", ["500 5.5.2 Line too long"], id="513"),
    ],
)
def test_normalize_reads_lf_only_command_lines(wire: bytes, expected: list[str]) -> None:
    client = ready(normalize_bare_lf=True)
    assert reply_lines(client.send(wire)) == expected
    if not expected:  # the CR was the first half of a CRLF
        assert reply_lines(client.send(b"\n")) == ["250 2.0.0 OK"]
    assert client.last("NOOP") == "250 2.0.0 OK"


def test_normalize_lf_only_session_delivers() -> None:
    """``nc`` without ``-C``: LF-only commands; the text still ends with CRLF "." CRLF."""
    client = Client(normalize_bare_lf=True)
    out = client.send(b"EHLO nc.test\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\nhi\n\r\n.\r\nQUIT\n")
    lines = reply_lines(out)
    assert lines[-4:] == [
        "250 2.1.5 <c@d>... Recipient ok",
        '354 Enter mail, end with "." on a line by itself',
        "250 2.0.0 Q Message accepted for delivery",
        "221 2.0.0 mx.example.test closing connection",
    ]
    assert client.data == b"hi\r\n\r\n"


@pytest.mark.parametrize(
    ("setup", "command"),
    [
        pytest.param([], "MAIL FROM:" + "a" * 2000, id="bare-address"),
        pytest.param([], "MAIL FROM:<a@b> X=\x01\x7f" + "b" * 1900, id="param-value"),
        pytest.param([], "MAIL FROM:<a@b> " + "K" * 1900 + "=1", id="param-keyword"),
        pytest.param([], "MAIL FROM:<a@b> BODY=" + "Q" * 1900, id="body-value"),
        pytest.param([], "MAIL FROM:<\x01@b>", id="control-in-path"),
        pytest.param(["MAIL FROM:<a@b>"], "RCPT TO:" + "b" * 2000, id="rcpt-address"),
        pytest.param(["MAIL FROM:<a@b>"], "RCPT TO:<c@d> " + "N" * 1900, id="rcpt-keyword"),
        pytest.param([], "HELP \x1b[31m" + "h" * 490, id="help-topic"),
    ],
)
def test_replies_quoting_client_text_stay_short_and_clean(setup: list[str], command: str) -> None:
    client = ready()
    client.lines(*setup)
    line = client.last(command)
    assert line[0] in "45" and len(line) + 2 <= 512
    assert line.isprintable()


# -- informational commands ------------------------------------------------------------


def test_help() -> None:
    client = ready()
    lines = client.lines("HELP")
    assert all(line.startswith("214-2.0.0 ") for line in lines[:-1])
    assert lines[-1] == "214 2.0.0 End of HELP info"
    assert any("MAIL" in line for line in lines)
    mail = client.lines("HELP mail")
    assert mail[0].startswith("214-2.0.0 MAIL FROM:<sender>")
    assert mail[-1] == "214 2.0.0 End of HELP info"
    assert client.last("HELP FROB") == '504 5.3.0 HELP topic "FROB" unknown'
    assert client.of(Help) == [Help(None), Help("mail"), Help("FROB")]
    assert Client().last("HELP").startswith("214 ")  # allowed before HELO


@pytest.mark.parametrize(
    ("extensions", "command"),
    [
        pytest.param(Extensions(help=False), "HELP", id="help"),
        pytest.param(Extensions(verb=False), "VERB", id="verb"),
        pytest.param(Extensions(expn=False), "EXPN list", id="expn"),
        pytest.param(Extensions(etrn=False), "ETRN example.org", id="etrn"),
        pytest.param(Extensions(chunking=False), "BDAT 0 LAST", id="bdat"),
    ],
)
def test_disabled_commands_are_not_implemented(extensions: Extensions, command: str) -> None:
    client = (
        in_rcpt(extensions=extensions)
        if command.startswith("BDAT")
        else ready(extensions=extensions)
    )
    state = client.conn.state
    assert client.last(command) == "502 5.5.1 Command not implemented"
    assert client.conn.state is state


@pytest.mark.parametrize(
    ("command", "event", "line"),
    [
        ("VERB", Verb(None), "250 2.0.0 OK"),
        ("VERB on", Verb("on"), "250 2.0.0 OK"),
        ("VRFY postmaster", Vrfy("postmaster"), "250 2.0.0 OK"),
        ("VRFY", None, "501 5.5.4 Syntax: VRFY address"),
        ("VRFY   ", None, "501 5.5.4 Syntax: VRFY address"),
        ("EXPN staff", Expn("staff"), "250 2.0.0 OK"),
        ("EXPN", None, "501 5.5.4 Syntax: EXPN list"),
        ("ETRN example.org", Etrn("example.org"), "250 2.0.0 OK"),
        ("ETRN @example.org", Etrn("@example.org"), "250 2.0.0 OK"),
        ("ETRN #queue-1", Etrn("#queue-1"), "250 2.0.0 OK"),
        ("ETRN", None, "501 5.5.4 Syntax: ETRN [@|#]node"),
        ("ETRN bad..domain", None, "501 5.5.4 Syntax: ETRN [@|#]node"),
        ("ETRN @", None, "501 5.5.4 Syntax: ETRN [@|#]node"),
    ],
)
def test_informational_commands(command: str, event: Event | None, line: str) -> None:
    client = ready()
    assert client.last(command) == line
    got = [e for e in client.events if not isinstance(e, Ehlo | BadCommand)]
    assert got == ([event] if event is not None else [])


def test_vrfy_expn_allowed_before_helo_and_in_transaction() -> None:
    assert Client().last("VRFY x") == "250 2.0.0 OK"
    client = in_rcpt()
    assert client.lines("VRFY x", "EXPN y") == ["250 2.0.0 OK"] * 2
    assert client.conn.state is State.RCPT


# -- STARTTLS ---------------------------------------------------------------------------


def test_starttls_not_advertised() -> None:
    client = ready()
    assert client.last("STARTTLS") == "502 5.5.1 STARTTLS not available"
    assert client.last("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS"


def test_starttls_with_argument_when_advertised() -> None:
    client = ready(extensions=Extensions(starttls=True))
    assert client.last("STARTTLS x") == "501 5.5.4 Syntax: STARTTLS"
    assert client.conn.state is State.READY


def test_starttls_discards_pipelined_plaintext() -> None:
    client = ready(extensions=Extensions(starttls=True))
    out = client.send(b"STARTTLS\r\nMAIL FROM:<x@y>\r\n")
    assert reply_lines(out) == ["220 2.0.0 Ready to start TLS"]
    assert client.conn.state is State.TLS
    assert client.conn.next_event() is PAUSED
    # Plaintext arriving before the handshake finishes is dropped too.
    assert client.send(b"RCPT TO:<v@y>\r\nDATA\r\n") == b""
    client.conn.tls_established()
    assert client.conn.tls and client.conn.state is State.INIT and client.conn.helo is None
    assert client.conn.next_event() is NEED_DATA
    assert client.last("MAIL FROM:<x@y>") == "503 5.5.1 Polite people say HELO first"
    assert not client.of(Mail) and not client.of(Rcpt)
    assert client.last("EHLO again").startswith("250 ")
    assert client.last("STARTTLS") == "503 5.5.1 TLS already active"
    assert client.last("MAIL FROM:<x@y>").startswith("250 ")


def test_starttls_forgets_authentication() -> None:
    ext = Extensions(starttls=True, auth=("PLAIN",))
    client = ready(extensions=ext, policy={AuthCredentials: lambda e: reply(235, "2.0.0", "OK")})
    assert client.lines("AUTH PLAIN AGEAYg==") == ["235 2.0.0 OK"]  # \0a\0b
    assert client.of(AuthCredentials) == [AuthCredentials("PLAIN", "", "a", "b")]
    assert client.conn.authenticated
    client.lines("STARTTLS")
    client.conn.tls_established()
    assert not client.conn.authenticated  # RFC 3207 §4.2
    # The client must EHLO again, and then may (and must) authenticate again.
    assert client.last("AUTH PLAIN AGEAYg==") == "503 5.5.1 Polite people say HELO first"
    client.lines("EHLO again")
    assert client.last("AUTH PLAIN AGEAYg==") == "235 2.0.0 OK"
    assert client.conn.authenticated


def test_starttls_refused_keeps_reading_commands() -> None:
    client = ready(
        extensions=Extensions(starttls=True),
        policy={StartTls: lambda e: reply(454, "4.7.0", "TLS not available now")},
    )
    out = client.send(b"STARTTLS\r\nMAIL FROM:<x@y>\r\n")
    assert reply_lines(out) == ["454 4.7.0 TLS not available now", "250 2.1.0 <x@y>... Sender ok"]


def test_implicit_tls_refuses_starttls() -> None:
    client = Client(extensions=Extensions(starttls=True))
    client.conn.implicit_tls()
    client.lines("EHLO c")
    assert client.last("STARTTLS") == "503 5.5.1 TLS already active"


def test_tls_established_outside_handshake_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        ready().conn.tls_established()


# -- AUTH -----------------------------------------------------------------------------
#
# The core runs the SASL exchange (RFC 4954) itself: it builds the 334 challenges, decodes
# the responses, and asks the application only to check credentials (PLAIN, LOGIN), to
# supply keys (SCRAM lookup) and to confirm a verified outcome. ``smtp_driver.answer``
# knows one account, ``USER``/``PASSWORD``.


AUTH_EXT = Extensions(auth=("PLAIN", "LOGIN"))
SCRAM_EXT = Extensions(auth=("SCRAM-SHA-256",))
AUTH_OK = "235 2.0.0 OK Authenticated"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
USERNAME = "334 VXNlcm5hbWU6"
PASSWORD_PROMPT = "334 UGFzc3dvcmQ6"


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def plain(user: str = USER, password: str = PASSWORD, authzid: str = "") -> str:
    return b64(f"{authzid}\0{user}\0{password}")


def test_auth_not_enabled() -> None:
    assert ready().last("AUTH PLAIN") == "503 5.5.1 Error: authentication not enabled"


def test_auth_plain_exchange_success() -> None:
    client = ready(extensions=AUTH_EXT)
    assert client.lines("AUTH plain") == ["334 "]
    assert client.conn.state is State.AUTH
    assert client.of(AuthChallenge) == [AuthChallenge("PLAIN", reply(334, None, ""))]
    assert client.lines(plain(authzid="boss")) == [AUTH_OK]
    assert client.of(AuthCredentials) == [AuthCredentials("PLAIN", "boss", USER, PASSWORD)]
    assert client.conn.authenticated and client.conn.state is State.READY
    assert client.last("AUTH PLAIN") == "503 5.5.1 Already authenticated"
    assert client.last(f"AUTH LOGIN {b64(USER)}") == "503 5.5.1 Already authenticated"


def test_command_line_in_exchange_is_a_sasl_response() -> None:
    client = ready(extensions=AUTH_EXT)
    client.lines("AUTH PLAIN")
    # In the exchange, a line that looks like a command is just a (bad) SASL response.
    assert client.lines("MAIL FROM:<a@b>") == ["501 5.5.2 Invalid base64 data"]
    assert not client.of(Mail) and not client.of(AuthCredentials)
    assert not client.conn.authenticated and client.conn.state is State.READY
    assert client.last("MAIL FROM:<a@b>").startswith("250 ")


def test_auth_failure_returns_to_ready() -> None:
    client = ready(extensions=AUTH_EXT)
    assert client.lines("AUTH LOGIN", b64(USER), b64("wrong")) == [
        USERNAME,
        PASSWORD_PROMPT,
        AUTH_FAILED,
    ]
    assert client.of(AuthCredentials) == [AuthCredentials("LOGIN", "", USER, "wrong")]
    assert not client.conn.authenticated and client.conn.state is State.READY
    assert client.last("MAIL FROM:<a@b>").startswith("250 ")


def test_auth_failure_then_retry_succeeds() -> None:
    client = ready(extensions=AUTH_EXT)
    assert client.last(f"AUTH PLAIN {plain(password='wrong')}") == AUTH_FAILED
    assert client.last(f"AUTH PLAIN {plain()}") == AUTH_OK
    assert client.conn.authenticated


@pytest.mark.parametrize("before", [[], [b64(USER)]], ids=["at-username", "at-password"])
def test_auth_cancel_with_star(before: list[str]) -> None:
    client = ready(extensions=AUTH_EXT)
    lines = client.lines("AUTH LOGIN", *before, "*", "NOOP")
    assert lines == [
        USERNAME,
        *([PASSWORD_PROMPT] if before else []),
        "501 5.5.2 Authentication cancelled",
        "250 2.0.0 OK",
    ]
    assert not client.of(AuthCredentials) and not client.conn.authenticated
    assert client.conn.state is State.READY


@pytest.mark.parametrize("line", ["not base64!", "dXNlcg", "dXNl cg==", "é"])
def test_auth_bad_base64_line(line: str) -> None:
    client = ready(extensions=AUTH_EXT)
    assert client.lines("AUTH LOGIN", line, "NOOP") == [
        USERNAME,
        "501 5.5.2 Invalid base64 data",
        "250 2.0.0 OK",
    ]
    assert not client.of(AuthCredentials) and client.conn.state is State.READY


def test_auth_malformed_response() -> None:
    client = ready(extensions=AUTH_EXT)
    # Valid base64, but not authzid NUL authcid NUL passwd.
    assert client.lines("AUTH PLAIN", b64("just-a-name")) == [
        "334 ",
        "501 5.5.2 Malformed authentication exchange",
    ]
    assert not client.of(AuthCredentials) and client.conn.state is State.READY


@pytest.mark.parametrize(
    ("command", "expected", "events"),
    [
        (
            "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
            AUTH_OK,
            [AuthCredentials("PLAIN", "", "alice", "secret")],
        ),
        # "=" is an empty initial response (RFC 4954 §4), which PLAIN cannot use.
        ("AUTH PLAIN =", "501 5.5.2 Malformed authentication exchange", []),
        ("AUTH LOGIN =", "501 5.5.2 Malformed authentication exchange", []),
        # Without an initial response the exchange starts with a challenge.
        ("AUTH login", USERNAME, [AuthChallenge("LOGIN", reply(334, None, "VXNlcm5hbWU6"))]),
        # LOGIN's initial response is the user name (smtplib and others send it).
        (
            f"AUTH LOGIN {b64(USER)}",
            PASSWORD_PROMPT,
            [AuthChallenge("LOGIN", reply(334, None, "UGFzc3dvcmQ6"))],
        ),
    ],
    ids=["plain", "plain-empty", "login-empty", "login", "login-initial"],
)
def test_auth_initial_response(command: str, expected: str, events: list[Event]) -> None:
    client = ready(extensions=AUTH_EXT, policy={AuthCredentials: accept_any})
    assert client.last(command) == expected
    assert client.of(AuthChallenge, AuthCredentials) == events
    assert client.conn.authenticated == expected.startswith("235")
    in_exchange = expected.startswith("334")
    assert (client.conn.state is State.AUTH) == in_exchange


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication type"),
        ("AUTH SCRAM-SHA-256", "504 5.5.4 Unrecognized authentication type"),  # not offered
        ("AUTH", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ("AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ("AUTH PLAIN !!!", "501 5.5.2 Invalid base64 data"),  # RFC 4954 §4
        ("AUTH LOGIN not-base64", "501 5.5.2 Invalid base64 data"),
        ("AUTH THIS-NAME-IS-TOO-LONG-X", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
    ],
)
def test_auth_syntax(command: str, expected: str) -> None:
    client = ready(extensions=AUTH_EXT)
    assert client.last(command) == expected
    assert client.conn.state is State.READY


def test_auth_long_response_line_allowed() -> None:
    client = ready(extensions=AUTH_EXT)
    client.lines("AUTH PLAIN")
    password = "p" * (9213 - len(f"\0{USER}\0"))  # 9213 octets encode to 12284
    line = plain(password=password)
    assert len(line) + 2 == 12286  # within the 12288 octets of RFC 4954 §4
    assert client.lines(line) == [AUTH_FAILED]
    assert client.of(AuthCredentials) == [AuthCredentials("PLAIN", "", USER, password)]
    # One octet over the limit is a line too long; the exchange is over.
    client.lines("AUTH PLAIN")
    assert client.lines("A" * 12288) == ["500 5.5.2 Line too long"]
    assert client.conn.state is State.READY and len(client.of(AuthCredentials)) == 1


def test_auth_initial_response_line_may_be_long() -> None:
    client = ready(extensions=AUTH_EXT)
    password = "p" * 9000
    assert client.last(f"AUTH PLAIN {plain(password=password)}") == AUTH_FAILED
    assert client.of(AuthCredentials) == [AuthCredentials("PLAIN", "", USER, password)]


def test_bad_line_in_auth_exchange_ends_it() -> None:
    client = ready(extensions=AUTH_EXT)
    client.lines("AUTH PLAIN")
    out = client.send(b"abc\nNOOP\r\n")
    assert reply_lines(out) == [
        "500 5.5.2 Bare CR or LF in command line; lines must end in CRLF",
        "250 2.0.0 OK",
    ]
    assert client.conn.state is State.READY and not client.of(AuthCredentials)


def test_pipelined_mail_after_auth_is_not_swallowed() -> None:
    client = ready(extensions=AUTH_EXT)
    out = client.send(f"AUTH PLAIN {plain()}\r\nMAIL FROM:<a@b>\r\n".encode())
    assert reply_lines(out) == [AUTH_OK, "250 2.1.0 <a@b>... Sender ok"]
    assert len(client.of(Mail)) == 1
    client = ready(extensions=AUTH_EXT)
    client.lines("AUTH LOGIN")
    out = client.send(f"{b64(USER)}\r\n{b64(PASSWORD)}\r\nMAIL FROM:<a@b>\r\n".encode())
    assert reply_lines(out) == [PASSWORD_PROMPT, AUTH_OK, "250 2.1.0 <a@b>... Sender ok"]
    assert len(client.of(Mail)) == 1 and client.conn.authenticated


@pytest.mark.parametrize(
    "answer",
    [
        reply(250, "2.0.0", "OK"),
        reply(454, "4.7.0", "Temporary authentication failure"),
        reply(535, "5.7.8", "Authentication credentials invalid"),
    ],
)
def test_authenticated_only_on_235(answer: Reply) -> None:
    client = ready(extensions=AUTH_EXT, policy={AuthCredentials: lambda e: answer})
    assert client.last(f"AUTH PLAIN {plain()}") == answer.to_bytes().decode().rstrip()
    assert not client.conn.authenticated and client.conn.state is State.READY
    assert client.last("AUTH LOGIN") == USERNAME  # may try again


def _scram_first(client: Client, nonce: str = "rOprNGfwEbeRWgbNEkqO") -> tuple[str, str]:
    """Send client-first; return (client-first-bare, server-first)."""
    bare = f"n={USER},r={nonce}"
    line = client.last(f"AUTH SCRAM-SHA-256 {b64('n,,' + bare)}")
    assert line.startswith("334 ")
    server_first = base64.b64decode(line[4:]).decode()
    assert server_first.startswith(f"r={nonce}")
    return bare, server_first


def test_scram_exchange_success() -> None:
    client = ready(extensions=SCRAM_EXT)
    bare, server_first = _scram_first(client)
    assert client.of(AuthLookup) == [AuthLookup("SCRAM-SHA-256", "", USER)]
    final, verifier = client_final(PASSWORD, bare, server_first)
    assert client.last(b64(final)) == f"334 {b64(verifier)}"
    assert not client.conn.authenticated
    assert client.last("") == AUTH_OK
    assert client.of(AuthOutcome) == [AuthOutcome("SCRAM-SHA-256", "", USER, True)]
    assert client.conn.authenticated and client.conn.state is State.READY


def test_scram_wrong_password_fails_at_the_proof() -> None:
    client = ready(extensions=SCRAM_EXT)
    bare, server_first = _scram_first(client)
    final, _ = client_final("not " + PASSWORD, bare, server_first)
    assert client.last(b64(final)) == AUTH_FAILED
    assert client.of(AuthOutcome) == [AuthOutcome("SCRAM-SHA-256", "", USER, False)]
    assert not client.conn.authenticated and client.conn.state is State.READY


def test_scram_challenge_outside_scram_is_a_local_error() -> None:
    client = ready(extensions=AUTH_EXT)
    client.lines("AUTH PLAIN")
    with pytest.raises(LocalProtocolError):
        client.conn.scram_challenge(b"salt", 4096, b"k" * 32, b"s" * 32)


# -- the event/reply contract -----------------------------------------------------------


def test_paused_until_reply_is_sent() -> None:
    client = Client()
    client.conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
    first = client.conn.next_event()
    assert first == Ehlo("c")
    assert client.conn.next_event() is PAUSED
    assert client.conn.next_event() is PAUSED
    client.conn.send(client.answer(first))
    assert isinstance(client.conn.next_event(), Mail)


def test_greeting_state_is_paused() -> None:
    conn = ServerConnection(HOST)
    conn.receive_data(b"EHLO early\r\n")
    assert conn.state is State.GREETING and conn.next_event() is PAUSED
    conn.send(r.greeting(HOST, DATE))
    assert conn.next_event() == Ehlo("early")


def test_send_with_nothing_pending_is_a_local_error() -> None:
    client = Client()
    with pytest.raises(LocalProtocolError):
        client.conn.send(r.OK)
    client.conn.receive_data(b"NOOP\r\n")
    event = client.conn.next_event()
    client.conn.send(client.answer(event))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        client.conn.send(r.OK)


@pytest.mark.parametrize(
    ("code", "lines"),
    [(199, ("x",)), (600, ("x",)), (250, ()), (250, ("a\r\nb",)), (250, ("a\nb",))],
)
def test_malformed_reply_is_a_local_error(code: int, lines: tuple[str, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        Reply(code, lines)


def test_reply_formatting() -> None:
    multi = Reply(250, ("one", "two", "three"), "2.0.0")
    assert multi.to_bytes() == b"250-2.0.0 one\r\n250-2.0.0 two\r\n250 2.0.0 three\r\n"
    assert str(multi) == "250-2.0.0 one / 250-2.0.0 two / 250 2.0.0 three"
    assert reply(354, None, "go").to_bytes() == b"354 go\r\n"
    assert multi.is_positive and not multi.is_error and r.NEED_MAIL.is_error


def test_events_are_frozen() -> None:
    event = Ehlo("x")
    with pytest.raises(AttributeError):
        event.domain = "y"  # type: ignore[misc]


def test_quit_closes() -> None:
    client = in_rcpt()
    assert client.lines("QUIT", "NOOP") == ["221 2.0.0 mx.example.test closing connection"]
    assert client.conn.state is State.CLOSED and client.conn.next_event() is PAUSED


def test_eof_in_command_state() -> None:
    client = ready()
    client.send(b"NOO")
    client.eof()
    assert isinstance(client.events[-1], ConnectionClosed)
    assert client.conn.state is State.CLOSED


def test_eof_after_complete_commands_delivers_them_first() -> None:
    client = ready()
    client.conn.receive_data(b"NOOP\r\n")
    client.conn.receive_data(b"")
    client.pump()
    assert [type(e).__name__ for e in client.events[1:]] == ["Noop", "ConnectionClosed"]


@pytest.mark.parametrize("split", ["whole", "lines", "bytes"])
def test_pipelined_transaction_same_as_line_by_line(split: str) -> None:
    stream = (
        b"EHLO c.example\r\nMAIL FROM:<a@b> SIZE=20\r\nRCPT TO:<c@d>\r\nRCPT TO:<>\r\n"
        b"RCPT TO:<e@f>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nMAIL FROM:<g@h>\r\n"
        b"RCPT TO:<i@j>\r\nBDAT 4 LAST\r\nabcdRSET\r\nVRFY x\r\nQUIT\r\n"
    )
    reference = Client()
    for line in stream.split(b"\r\n")[:-1]:
        reference.send(line + b"\r\n")
    client = Client()
    if split == "whole":
        client.send(stream)
    elif split == "lines":
        for line in stream.splitlines(keepends=True):
            client.send(line)
    else:
        for i in range(len(stream)):
            client.send(stream[i : i + 1])
    assert client.out == reference.out
    assert [type(e) for e in client.events if not isinstance(e, DataChunk)] == [
        type(e) for e in reference.events if not isinstance(e, DataChunk)
    ]
    assert client.data == reference.data == b"Subject: x\r\n\r\n.dot\r\nabcd"
    assert reply_lines(client.out)[-1] == "221 2.0.0 mx.example.test closing connection"
    assert [line[:3] for line in reply_lines(client.out) if not line.startswith("250-")] == [
        "250",
        "250",
        "250",
        "501",
        "250",
        "354",
        "250",
        "250",
        "250",
        "250",
        "250",
        "250",
        "221",
    ]
