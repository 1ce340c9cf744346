"""The classic telnet sessions of the seed documents, typed at a real ``petrel serve``."""

from __future__ import annotations

import re

from conftest import HOSTNAME, PetrelServer, RawClient, etrn_conversation

DATE = r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"
QUEUE_ID = r"[0-9A-Z]{10,16}"


def test_seed_session_ehlo_mail_rcpt_data_quit(petrel: PetrelServer, raw: RawClient) -> None:
    """The Sendmail session of the seeds, reply by reply (AUTH belongs to the TLS issue)."""
    assert re.fullmatch(rf"220 {HOSTNAME} ESMTP Petrel; {DATE}", raw.reply()[0])
    ehlo = raw.command("EHLO wheelersoftware.com")
    assert ehlo[0] == (f"250-{HOSTNAME} Hello wheelersoftware.com [127.0.0.1], pleased to meet you")
    keywords = {line[4:].split()[0] for line in ehlo[1:]}
    assert {
        "ENHANCEDSTATUSCODES",
        "PIPELINING",
        "EXPN",
        "VERB",
        "8BITMIME",
        "SIZE",
        "DSN",
        "ETRN",
        "DELIVERBY",
        "HELP",
        "SMTPUTF8",
        "CHUNKING",
        "BINARYMIME",
    } <= keywords
    assert "250-SIZE 20000000" in ehlo
    assert ehlo[-1] == "250 HELP"
    assert raw.command("MAIL FROM:<darth.vader@deathstar.com>") == [
        "250 2.1.0 <darth.vader@deathstar.com>... Sender ok"
    ]
    assert raw.command(f"RCPT TO:<willie@{HOSTNAME}>") == [
        f"250 2.1.5 <willie@{HOSTNAME}>... Recipient ok"
    ]
    assert raw.command("DATA") == ['354 Enter mail, end with "." on a line by itself']
    raw.send(
        b"Date: Thu, 27 Mar 2008 23:12:49 -0700 (MST)\r\n"
        b"From: darth.vader@deathstar.com\r\n"
        b"To: willie@example.com\r\n"
        b"Subject: Great article\r\n"
        b"\r\n"
        b"Hi Willie,\r\n"
        b"I enjoyed your article on TCP/IP-based application protocols.\r\n"
        b"Join me, and together we can rule the galaxy as father and son.\r\n"
        b"Darth Vader\r\n"
        b".\r\n"
    )
    accepted = raw.reply()
    assert len(accepted) == 1
    assert re.fullmatch(rf"250 2\.0\.0 {QUEUE_ID} Message accepted for delivery", accepted[0])
    queue_id = accepted[0].split()[2]
    assert raw.command("QUIT") == [f"221 2.0.0 {HOSTNAME} closing connection"]
    assert raw.at_eof()

    [message] = petrel.wait_for_messages("willie")
    head, _, body = message.partition(b"\n\n")
    lines = head.split(b"\n")
    assert lines[0] == b"Return-Path: <darth.vader@deathstar.com>"
    assert lines[1] == f"Delivered-To: willie@{HOSTNAME}".encode()
    received = b"\n".join(lines[2:5]).decode()
    assert re.fullmatch(
        rf"Received: from wheelersoftware\.com \(unknown \[127\.0\.0\.1\]\)\n"
        rf"\tby {re.escape(HOSTNAME)} \(Petrel\) with ESMTP id {queue_id}\n"
        rf"\tfor <willie@{re.escape(HOSTNAME)}>; {DATE}",
        received,
    )
    assert b"Subject: Great article" in head
    assert body == (
        b"Hi Willie,\n"
        b"I enjoyed your article on TCP/IP-based application protocols.\n"
        b"Join me, and together we can rule the galaxy as father and son.\n"
        b"Darth Vader\n"
    )
    assert b"\r" not in message  # Maildir files use LF, as Postfix local(8) writes them


def test_seed_session_lenient_helo_without_brackets(petrel: PetrelServer, raw: RawClient) -> None:
    """The second seed: lower-case helo, MAIL/RCPT without angle brackets, two recipients."""
    raw.reply()
    assert raw.command("helo") == ["501 5.0.0 HELO requires domain address"]
    hello = raw.command("helo localhost.localdomain")
    assert hello == [f"250 {HOSTNAME} Hello localhost.localdomain [127.0.0.1], pleased to meet you"]
    assert raw.command("MAIL From:myaddress@mydomain.com") == [
        "250 2.1.0 <myaddress@mydomain.com>... Sender ok"
    ]
    assert raw.command(f"RCPT To:fred@{HOSTNAME}") == [
        f"250 2.1.5 <fred@{HOSTNAME}>... Recipient ok"
    ]
    assert raw.command(f"RCPT TO: freds_boss@{HOSTNAME}")[0].startswith("250 2.1.5")
    assert raw.command("DATA")[0].startswith("354 ")
    raw.send(
        b"Subject: I need the sales figures\r\nCC: freds_boss@somedomain.com\r\n\r\n"
        b"Hello Fred, can you call me?\r\n.\r\n"
    )
    assert raw.reply()[0].endswith("Message accepted for delivery")
    assert raw.command("QUIT")[0].startswith("221 2.0.0")
    [fred] = petrel.wait_for_messages("fred")
    [boss] = petrel.wait_for_messages("freds_boss")
    for message in (fred, boss):
        assert b"with SMTP id" in message  # HELO, not EHLO: RFC 3848 with-protocol SMTP
        assert message.endswith(b"\n\nHello Fred, can you call me?\n")
    # Two recipients: no "for" clause that would disclose the other one.
    assert b"\tfor <" not in fred


def test_seed_session_minimal_sendmail_921(petrel: PetrelServer, raw: RawClient) -> None:
    """The 2001 session: 'MAIL FROM: user@x' with a space, body without headers."""
    raw.reply()
    assert raw.command("HELO user123.example.com")[0].startswith("250 ")
    assert raw.command("MAIL FROM: user123@example.com")[0] == (
        "250 2.1.0 <user123@example.com>... Sender ok"
    )
    assert raw.command(f"RCPT TO: test@{HOSTNAME}")[0].startswith("250 2.1.5")
    assert raw.command("DATA")[0].startswith("354")
    raw.send(b"Hello\r\n.\r\n")
    assert raw.reply()[0].endswith("Message accepted for delivery")
    assert raw.command("QUIT")[0] == f"221 2.0.0 {HOSTNAME} closing connection"
    [message] = petrel.wait_for_messages("test")
    assert message.endswith(b"\nHello\n")


def test_pipelined_transaction_in_one_write(petrel: PetrelServer, raw: RawClient) -> None:
    """RFC 2920: the whole transaction sent at once; every reply comes, in order."""
    raw.reply()
    raw.send(
        b"EHLO pipeline.test\r\n"
        b"MAIL FROM:<a@pipeline.test>\r\n"
        b"RCPT TO:<p1@" + HOSTNAME.encode() + b">\r\n"
        b"RCPT TO:<nobody@elsewhere.test>\r\n"
        b"RCPT TO:<p2@" + HOSTNAME.encode() + b">\r\n"
        b"DATA\r\n"
        b"Subject: pipelined\r\n\r\nbody\r\n.\r\n"
        b"QUIT\r\n"
    )
    assert raw.reply()[-1] == "250 HELP"
    assert raw.reply()[0].startswith("250 2.1.0")
    assert raw.reply()[0].startswith("250 2.1.5")
    assert raw.reply()[0] == "554 5.7.1 <nobody@elsewhere.test>: Relay access denied"
    assert raw.reply()[0].startswith("250 2.1.5")
    assert raw.reply()[0].startswith("354 ")
    assert raw.reply()[0].endswith("Message accepted for delivery")
    assert raw.reply()[0].startswith("221 ")
    assert petrel.wait_for_messages("p1")[0].endswith(b"\nbody\n")
    assert petrel.wait_for_messages("p2")[0].endswith(b"\nbody\n")


def test_help_verb_noop_rset_vrfy_expn(petrel: PetrelServer, raw: RawClient) -> None:
    raw.reply()
    raw.command("EHLO client.test")
    help_all = raw.command("HELP")
    assert help_all[0].startswith("214-2.0.0")
    assert help_all[-1].startswith("214 2.0.0")
    assert any("MAIL" in line for line in help_all)
    help_mail = raw.command("HELP MAIL")
    assert help_mail[0].startswith("214-2.0.0 MAIL FROM:<sender>")
    assert raw.command("HELP FROB")[0].startswith("504 5.3.0")
    assert raw.command("VERB") == ["250 2.0.0 Verbose mode"]
    assert raw.command("NOOP") == ["250 2.0.0 OK"]
    assert raw.command("RSET") == ["250 2.0.0 Reset state"]
    # Default policy "authenticated": no user enumeration for anonymous clients.
    assert raw.command(f"VRFY willie@{HOSTNAME}")[0].startswith("252 2.5.2")
    assert raw.command("VRFY nosuchuser")[0].startswith("252 2.5.2")
    assert raw.command("EXPN postmaster")[0].startswith("502 5.7.0")


def test_expn_lists_alias_members_when_allowed(petrel_factory) -> None:
    server: PetrelServer = petrel_factory('[policy]\nvrfy = "on"\nexpn = "on"\n')
    (server.data_dir / "aliases").write_text(
        "# team list\nteam: alice, bob@mx.petrel.test,\n  carol@elsewhere.test\n"
    )
    client = RawClient(server.connect())
    client.reply()
    client.command("EHLO client.test")
    assert client.command("EXPN team") == [
        f"250-2.1.5 <alice@{HOSTNAME}>",
        f"250-2.1.5 <bob@{HOSTNAME}>",
        "250 2.1.5 <carol@elsewhere.test>",
    ]
    assert client.command(f"VRFY alice@{HOSTNAME}") == [f"250 2.1.5 <alice@{HOSTNAME}>"]
    assert client.command("VRFY someone@elsewhere.test")[0].startswith("252 2.5.2")
    # Mail to the alias reaches the local members; the remote one waits in the queue.
    client.command(f"MAIL FROM:<boss@{HOSTNAME}>")
    assert client.command(f"RCPT TO:<team@{HOSTNAME}>")[0].startswith("250 2.1.5")
    client.command("DATA")
    client.send(b"Subject: team\r\n\r\nhi team\r\n.\r\n")
    assert client.reply()[0].endswith("Message accepted for delivery")
    alice = server.wait_for_messages("alice")[0]
    bob = server.wait_for_messages("bob")[0]
    assert f"Delivered-To: alice@{HOSTNAME}".encode() in alice
    assert f"Delivered-To: bob@{HOSTNAME}".encode() in bob
    assert not server.mailbox("team").exists()
    assert len(server.queue_files()) == 1  # carol@elsewhere.test: relay is a later issue
    client.close()


def test_bdat_chunks_deliver_binary_safe(petrel: PetrelServer, raw: RawClient) -> None:
    """RFC 3030 CHUNKING: counted chunks, no dot-stuffing, the last one commits."""
    raw.reply()
    raw.command("EHLO chunky.test")
    raw.command("MAIL FROM:<c@chunky.test> BODY=BINARYMIME")
    raw.command(f"RCPT TO:<chunks@{HOSTNAME}>")
    first = b"Subject: chunked\r\n\r\n.leading dot stays\r\n"
    raw.send(b"BDAT %d\r\n" % len(first) + first)
    assert raw.reply() == [f"250 2.0.0 {len(first)} octets received"]
    last = b"tail\r\n"
    raw.send(b"BDAT %d LAST\r\n" % len(last) + last)
    assert raw.reply()[0].endswith("Message accepted for delivery")
    [message] = petrel.wait_for_messages("chunks")
    assert message.endswith(b"\n\n.leading dot stays\ntail\n")


def test_etrn_from_relay_network(petrel_factory) -> None:
    etrn_conversation(petrel_factory('[domains]\nrelay_networks = ["127.0.0.1/32"]\n'))


def test_etrn_refused_for_strangers(petrel: PetrelServer, raw: RawClient) -> None:
    raw.reply()
    raw.command("EHLO stranger.test")
    assert raw.command("ETRN example.test")[0].startswith("459 4.7.1")
