"""Relaying end to end: a real ``petrel serve`` hands mail to a second Petrel or to a
scripted peer, and the DSNs that come back are parsed with the stdlib ``email``."""

from __future__ import annotations

import email
import email.message
import email.policy
import re
import smtplib
from collections.abc import Iterator

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until
from petrel.smtp import EndOfData, Extensions, Rcpt, reply
from smtp_peer import PeerScript, Received, ScriptedPeer


@pytest.fixture
def peers() -> Iterator[list[ScriptedPeer]]:
    started: list[ScriptedPeer] = []
    yield started
    for peer in started:
        peer.stop()


def _relay_config(port: int, extra: str = "") -> str:
    return f"""
[domains]
relay_networks = ["127.0.0.0/8"]

[delivery]
dns = false
hosts = {{ "remote.test" = ["127.0.0.1:{port}"] }}
connect_timeout = "2s"
command_timeout = "2s"

[queue]
min_backoff = "1s"
max_backoff = "1s"
{extra}
"""


def _send(server: PetrelServer, rcpt: str, **rcpt_options: list[str]) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("client.test")
        client.sendmail(
            f"alice@{HOSTNAME}",
            [rcpt],
            b"Subject: relay me\r\nMessage-ID: <m1@client.test>\r\n\r\nthe-body-text\r\n",
            rcpt_options=rcpt_options.get("rcpt_options", []),
            mail_options=rcpt_options.get("mail_options", []),
        )


def _report(raw: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    """The DSN and its per-recipient status blocks."""
    message = email.message_from_bytes(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = message.get_payload()
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()
    return message, blocks


def test_relay_to_a_second_petrel(petrel_factory) -> None:
    peer = petrel_factory('[domains]\nlocal = ["remote.test"]\n', name="peer")
    sender = petrel_factory(_relay_config(peer.port), name="sender")
    _send(sender, "bob@remote.test")
    [message] = peer.wait_for_messages("bob", domain="remote.test")
    assert b"Subject: relay me" in message
    assert message.count(b"Received:") == 2  # the sender's and the peer's trace fields
    sender.wait_queue_empty()
    assert "event=delivered" in sender.log_text()


def test_permanent_failure_bounces_to_the_sender(petrel_factory, peers) -> None:
    peer = ScriptedPeer(
        PeerScript(policy={Rcpt: lambda e: reply(550, "5.1.1", "User unknown")})
    ).start()
    peers.append(peer)
    sender = petrel_factory(_relay_config(peer.port), name="sender")
    _send(
        sender,
        "nobody@remote.test",
        rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;nobody@remote.test"],
        mail_options=["RET=HDRS", "ENVID=abc123"],
    )
    [raw] = sender.wait_for_messages("alice")
    message, blocks = _report(raw)
    assert message["From"].startswith("Mail Delivery System")
    assert raw.startswith(b"Return-Path: <>")
    per_message, per_rcpt = blocks[0], blocks[1]
    assert per_message["Reporting-MTA"] == f"dns; {HOSTNAME}"
    assert per_message["Original-Envelope-Id"] == "abc123"
    assert per_message["Arrival-Date"]
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Final-Recipient"] == "rfc822; nobody@remote.test"
    assert per_rcpt["Original-Recipient"] == "rfc822; nobody@remote.test"
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert "550 5.1.1 User unknown" in per_rcpt["Diagnostic-Code"]
    assert per_rcpt["Last-Attempt-Date"]
    returned = message.get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"  # RET=HDRS
    assert "Subject: relay me" in returned.get_payload()
    assert "the-body-text" not in returned.get_payload()
    sender.wait_queue_empty()


def test_notify_never_sends_nothing_and_full_return_by_default(petrel_factory, peers) -> None:
    peer = ScriptedPeer(
        PeerScript(policy={EndOfData: lambda e: reply(554, "5.7.1", "rejected")})
    ).start()
    peers.append(peer)
    sender = petrel_factory(_relay_config(peer.port), name="sender")
    _send(sender, "quiet@remote.test", rcpt_options=["NOTIFY=NEVER"])
    _send(sender, "loud@remote.test")
    [raw] = sender.wait_for_messages("alice")
    message, blocks = _report(raw)
    assert blocks[1]["Final-Recipient"] == "rfc822; loud@remote.test"
    returned = message.get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"  # no RET: the full message
    sender.wait_queue_empty()
    assert len(sender.messages("alice")) == 1


def test_success_notice_for_relay_to_peer_without_dsn(petrel_factory, peers) -> None:
    peer = ScriptedPeer(PeerScript(extensions=Extensions(dsn=False))).start()
    peers.append(peer)
    sender = petrel_factory(_relay_config(peer.port), name="sender")
    _send(sender, "bob@remote.test", rcpt_options=["NOTIFY=SUCCESS"])
    [raw] = sender.wait_for_messages("alice")
    _, blocks = _report(raw)
    assert blocks[1]["Action"] == "relayed"
    assert len(peer.messages) == 1


EIGHT_BIT_TEXT = "Grüße aus Köln, naïve café: 8-bit text\r\n"
EIGHT_BIT_MESSAGE = (
    b"Subject: 8-bit\r\n"
    b"Message-ID: <m8@client.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n" + EIGHT_BIT_TEXT.encode()
)


def _relay_8bit(petrel_factory, peers, extensions: Extensions) -> tuple[PetrelServer, Received]:
    """Send EIGHT_BIT_MESSAGE with BODY=8BITMIME through a Petrel to a scripted peer."""
    peer = ScriptedPeer(PeerScript(extensions=extensions)).start()
    peers.append(peer)
    sender = petrel_factory(_relay_config(peer.port), name="sender")
    with smtplib.SMTP(sender.host, sender.port) as client:
        client.ehlo("client.test")
        client.sendmail(
            f"alice@{HOSTNAME}",
            ["bob@remote.test"],
            EIGHT_BIT_MESSAGE,
            mail_options=["BODY=8BITMIME"],
        )
    wait_until(lambda: peer.messages, what="the peer to receive the message")
    sender.wait_queue_empty()
    [received] = peer.messages
    return sender, received


def test_8bit_message_to_a_peer_without_8bitmime_is_converted(petrel_factory, peers) -> None:
    sender, received = _relay_8bit(petrel_factory, peers, Extensions(eightbitmime=False))
    assert received.data.isascii()
    assert received.params.body is None  # no BODY=8BITMIME to a peer that lacks it
    assert received.params.size == len(received.data)  # the converted size
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message["X-MIME-Autoconverted"].startswith(
        f"from 8bit to quoted-printable by {HOSTNAME} id "
    )
    assert message.get_content() == EIGHT_BIT_TEXT
    assert "event=converted-7bit" in sender.log_text()


def test_8bit_message_to_a_peer_with_8bitmime_is_sent_as_is(petrel_factory, peers) -> None:
    sender, received = _relay_8bit(petrel_factory, peers, Extensions())
    assert received.params.body == "8BITMIME"
    assert received.data.endswith(b"\r\n" + EIGHT_BIT_MESSAGE)  # after our Received: field
    assert "event=converted-7bit" not in sender.log_text()


def test_success_notice_for_local_delivery(petrel_factory) -> None:
    server = petrel_factory()
    _send(server, f"bob@{HOSTNAME}", rcpt_options=["NOTIFY=SUCCESS"])
    server.wait_for_messages("bob")
    [raw] = server.wait_for_messages("alice")
    _, blocks = _report(raw)
    assert blocks[1]["Action"] == "delivered"
    assert blocks[1]["Status"] == "2.0.0"


def test_deferral_then_delay_notice_then_expiry_bounce(petrel_factory, peers) -> None:
    peer = ScriptedPeer(
        PeerScript(policy={Rcpt: lambda e: reply(451, "4.3.0", "try again")})
    ).start()
    peers.append(peer)
    sender = petrel_factory(
        _relay_config(peer.port, 'delay_warning = "1s"\nlifetime = "3s"'), name="sender"
    )
    _send(sender, "slow@remote.test")
    first, second = sender.wait_for_messages("alice", count=2, timeout=20)
    _, delay_blocks = _report(first)
    assert delay_blocks[1]["Action"] == "delayed"
    assert delay_blocks[1]["Status"] == "4.3.0"
    assert delay_blocks[1]["Will-Retry-Until"]
    _, fail_blocks = _report(second)
    assert fail_blocks[1]["Action"] == "failed"
    assert fail_blocks[1]["Status"] == "4.4.7"
    sender.wait_queue_empty()


def test_bounce_of_a_bounce_goes_to_postmaster_once(petrel_factory, peers) -> None:
    peer = ScriptedPeer(
        PeerScript(policy={Rcpt: lambda e: reply(550, "5.1.1", "User unknown")})
    ).start()
    peers.append(peer)
    sender = petrel_factory(_relay_config(peer.port), name="sender")
    with smtplib.SMTP(sender.host, sender.port) as client:
        client.sendmail("<>", ["gone@remote.test"], b"Subject: a bounce\r\n\r\nx\r\n")
    [raw] = sender.wait_for_messages("postmaster")
    message, _ = _report(raw)
    assert "double bounce" in message["Subject"]
    sender.wait_queue_empty()
    assert sender.messages("alice") == []


def _lmtp_target(petrel_factory) -> tuple[PetrelServer, int]:
    """A Petrel with an extra LMTP listener for box.test; returns it and that port."""
    target = petrel_factory(
        '[domains]\nlocal = ["box.test"]\n\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "lmtp"\n',
        name="lmtp-target",
    )
    match = wait_until(
        lambda: re.search(r"event=listening address=\S+:(\d+) mode=lmtp", target.log_text()),
        what="the lmtp listener",
    )
    assert isinstance(match, re.Match)
    return target, int(match[1])


def test_lmtp_delivery_to_petrels_own_lmtp_listener(petrel_factory) -> None:
    target, lmtp_port = _lmtp_target(petrel_factory)
    sender = petrel_factory(
        _relay_config(1, f'\n[domains.lmtp]\n"box.test" = "127.0.0.1:{lmtp_port}"\n'),
        name="sender",
    )
    with smtplib.SMTP(sender.host, sender.port) as client:
        client.sendmail(
            f"alice@{HOSTNAME}", ["a@box.test", "b@box.test"], b"Subject: lmtp\r\n\r\nx\r\n"
        )
    for user in ("a", "b"):
        [message] = target.wait_for_messages(user, domain="box.test")
        assert b"Subject: lmtp" in message
        assert b"with LMTP" in message
    sender.wait_queue_empty()


def test_lmtp_listener_answers_per_recipient(petrel_factory) -> None:
    import socket

    _, lmtp_port = _lmtp_target(petrel_factory)
    with socket.create_connection(("127.0.0.1", lmtp_port), timeout=10) as sock:
        sock.sendall(
            b"LHLO me.test\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<a@box.test>\r\n"
            b"RCPT TO:<b@box.test>\r\nDATA\r\n"
        )
        buf = b""
        while b"354" not in buf:
            buf += sock.recv(65536)
        sock.sendall(b"Subject: s\r\n\r\nx\r\n.\r\nQUIT\r\n")
        while b"221" not in buf:
            buf += sock.recv(65536)
    assert buf.count(b"Message accepted for delivery") == 2


def test_too_many_received_fields_refused_at_end_of_data(petrel_factory) -> None:
    server = petrel_factory("[delivery]\ndns = false\nmax_received = 5\n")
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("loop.test")
        client.mail("a@loop.test")
        client.rcpt(f"b@{HOSTNAME}")
        code, text = client.data(b"Received: x\r\n" * 5 + b"Subject: loop\r\n\r\nbody\r\n")
        assert (code, text[:5]) == (554, b"5.4.6")
        client.mail("a@loop.test")
        client.rcpt(f"b@{HOSTNAME}")
        code, _ = client.data(b"Received: x\r\n" * 4 + b"Subject: ok\r\n\r\nbody\r\n")
        assert code == 250
    [message] = server.wait_for_messages("b")
    assert b"Subject: ok" in message


def test_smarthost_offering_only_scram_sha_256_gets_the_mail(petrel_factory) -> None:
    """A second Petrel as the smarthost, offering AUTH SCRAM-SHA-256 and nothing else
    (after STARTTLS): the sending Petrel authenticates with SCRAM and relays."""
    smarthost = petrel_factory(
        '[domains]\nlocal = ["remote.test", "mx.petrel.test"]\n\n'
        '[auth]\nmechanisms = ["SCRAM-SHA-256"]\n',
        name="smarthost",
    )
    smarthost.add_user("alice@mx.petrel.test", "s3cret-relay")  # the sender owns it
    secret = smarthost.root.parent / "relay-password"
    secret.write_text("s3cret-relay\n")
    sender = petrel_factory(
        _relay_config(1) + f'\n[relay]\nsmarthost = "127.0.0.1:{smarthost.port}"\n'
        f'username = "alice@mx.petrel.test"\npassword_file = "{secret}"\n'
        'tls = "opportunistic"\n',
        name="sender",
    )
    _send(sender, "bob@remote.test")
    [message] = smarthost.wait_for_messages("bob", domain="remote.test")
    assert b"Subject: relay me" in message
    assert b"with ESMTPSA" in message  # over TLS, authenticated
    sender.wait_queue_empty()
    log = smarthost.log_text()
    assert "event=auth" in log and "mechanism=SCRAM-SHA-256" in log
    assert "outcome=success" in log and "outcome=failure" not in log


def test_bounce_to_a_local_sender_without_mailbox_goes_to_the_postmaster(
    petrel_factory, peers
) -> None:
    peer = ScriptedPeer(
        PeerScript(policy={Rcpt: lambda e: reply(550, "5.1.1", "User unknown")})
    ).start()
    peers.append(peer)
    server = petrel_factory(_relay_config(peer.port), name="sender")
    server.add_user(f"willie@{HOSTNAME}", "willie-password")  # the domain has users now
    (server.data_dir / "aliases").write_text("postmaster: willie\n")
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail(f"root@{HOSTNAME}", ["nobody@remote.test"], b"Subject: cron\r\n\r\nx\r\n")
    [raw] = server.wait_for_messages("willie")  # root has no mailbox: postmaster's alias
    message, blocks = _report(raw)
    assert message["To"] == f"<root@{HOSTNAME}>"
    assert blocks[1]["Final-Recipient"] == "rfc822; nobody@remote.test"
    assert f"Delivered-To: willie@{HOSTNAME}".encode() in raw
    server.wait_queue_empty()
    assert not server.mailbox("root").exists()
    assert not server.mailbox("postmaster").exists()
    assert f"to=willie@{HOSTNAME}" in server.log_text()


def _named_relay_config(dns_address: str, extra: str) -> str:
    """A sender whose routes name hosts known only to the loopback DNS server."""
    return f"""
[domains]
relay_networks = ["127.0.0.0/8"]

[delivery]
connect_timeout = "2s"
command_timeout = "2s"

[dns]
nameservers = ["{dns_address}"]
timeout = "1s"

[queue]
min_backoff = "1s"
max_backoff = "1s"
{extra}
"""


def test_smarthost_and_lmtp_target_by_name_resolve_through_petrels_dns(
    petrel_factory, dns_server
) -> None:
    """relay.names.test and lmtp.names.test exist only in the test zone, so the system
    resolver (getaddrinfo) could not find them: petrel.dns does."""
    dns_server.zone("names.test", ["relay A 127.0.0.1", "lmtp A 127.0.0.1"])
    smarthost = petrel_factory('[domains]\nlocal = ["remote.test"]\n', name="smarthost")
    target, lmtp_port = _lmtp_target(petrel_factory)
    sender = petrel_factory(
        _named_relay_config(
            dns_server.address,
            f'[relay]\nsmarthost = "relay.names.test:{smarthost.port}"\ntls = "opportunistic"\n'
            f'[domains.lmtp]\n"box.test" = "lmtp.names.test:{lmtp_port}"\n',
        ),
        name="sender",
    )
    with smtplib.SMTP(sender.host, sender.port) as client:
        client.sendmail(
            f"alice@{HOSTNAME}", ["bob@remote.test", "a@box.test"], b"Subject: named\r\n\r\nx\r\n"
        )
    [relayed] = smarthost.wait_for_messages("bob", domain="remote.test")
    [lmtp] = target.wait_for_messages("a", domain="box.test")
    assert b"Subject: named" in relayed and b"with LMTP" in lmtp
    sender.wait_queue_empty()
    log = sender.log_text()
    assert 'to=bob@remote.test relay="dns; relay.names.test" status=2.0.0' in log
    assert 'to=a@box.test relay="dns; lmtp.names.test" status=2.0.0' in log


def test_a_smarthost_name_that_does_not_exist_defers_naming_the_key(
    petrel_factory, dns_server
) -> None:
    """A typo in relay.smarthost keeps the mail queued (4.4.3), it does not bounce it."""
    dns_server.zone("names.test", ["relay A 127.0.0.1"])
    sender = petrel_factory(
        _named_relay_config(
            dns_server.address,
            '[relay]\nsmarthost = "rleay.names.test:25"\ntls = "opportunistic"\n',
        ),
        name="sender",
    )
    _send(sender, "bob@remote.test")
    wait_until(lambda: "event=deferred" in sender.log_text(), what="the deferral")
    line = next(ln for ln in sender.log_text().splitlines() if "event=deferred" in ln)
    assert "status=4.4.3" in line
    assert "No address for relay.smarthost: rleay.names.test: no such name (NXDOMAIN)" in line
    assert sender.queue_files()  # still queued, for when the operator fixes the key
    assert sender.messages("alice") == []  # no bounce
