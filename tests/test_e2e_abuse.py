"""Attack traffic against a real server: smuggling, relay tricks, floods, limits."""

from __future__ import annotations

import pytest

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until
from smtp_peer import ScriptedPeer

SMUGGLING_VARIANTS = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-dot-lf": b"\r\n.\n",
}


def _start_transaction(client: RawClient, rcpt: str) -> None:
    client.reply()
    client.command("EHLO attacker.test")
    assert client.command("MAIL FROM:<a@attacker.test>")[0].startswith("250")
    assert client.command(f"RCPT TO:<{rcpt}@{HOSTNAME}>")[0].startswith("250")
    assert client.command("DATA")[0].startswith("354")


SMUGGLED = (
    b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<smuggled@"
    + HOSTNAME.encode()
    + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nsend money\r\n.\r\n"
)
REJECT = '[policy]\nbare_lf = "reject"\n'


@pytest.mark.parametrize("mode", ["reject", "normalize"])
@pytest.mark.parametrize("variant", SMUGGLING_VARIANTS.values(), ids=SMUGGLING_VARIANTS.keys())
def test_smtp_smuggling_never_yields_a_second_message(
    petrel_factory, variant: bytes, mode: str
) -> None:
    petrel: PetrelServer = petrel_factory(REJECT if mode == "reject" else "")
    client = RawClient(petrel.connect())
    _start_transaction(client, "victim")
    client.send(b"Subject: innocent\r\n\r\nhello" + variant + SMUGGLED)
    [verdict] = client.reply()
    normalized = mode == "normalize" and b"\r" not in variant.replace(b"\r\n", b"")
    if normalized:
        # Only CRLF "." CRLF ends the text: everything up to it is one message.
        assert verdict.endswith("Message accepted for delivery"), verdict
    else:
        assert verdict.startswith("550 5.6.0"), verdict
    # The session is still in sync: the next command is read as a command.
    assert client.command("NOOP") == ["250 2.0.0 OK"]
    assert client.command("QUIT")[0].startswith("221")
    client.close()
    assert petrel.messages("smuggled") == []
    if normalized:
        [message] = petrel.wait_for_messages("victim")
        # Maildir stores LF line ends; the "." line is there, as text.
        assert message.endswith(
            b"\nhello\n.\nMAIL FROM:<ceo@bank.test>\nRCPT TO:<smuggled@"
            + HOSTNAME.encode()
            + b">\nDATA\nSubject: smuggled\n\nsend money\n"
        )
    else:
        assert petrel.messages("victim") == []
        assert petrel.queue_files() == []


@pytest.mark.parametrize(
    "variant", [b"\n.\n", b"\n.\r\n", b"\r\n.\n"], ids=["lf-dot-lf", "lf-dot-crlf", "crlf-dot-lf"]
)
def test_normalized_smuggling_is_dot_stuffed_when_relayed(petrel_factory, variant: bytes) -> None:
    """The "." line that came next to a bare LF goes out stuffed: the peer sees text."""
    peer = ScriptedPeer().start()
    try:
        petrel: PetrelServer = petrel_factory(
            f"""
[domains]
relay_networks = ["127.0.0.0/8"]

[delivery]
dns = false
hosts = {{ "remote.test" = ["127.0.0.1:{peer.port}"] }}
"""
        )
        client = RawClient(petrel.connect())
        client.reply()
        client.command("EHLO relay.test")
        assert client.command("MAIL FROM:<app@relay.test>")[0].startswith("250")
        assert client.command("RCPT TO:<victim@remote.test>")[0].startswith("250")
        assert client.command("DATA")[0].startswith("354")
        client.send(b"Subject: innocent\r\n\r\nhello" + variant + SMUGGLED)
        assert client.reply()[0].endswith("Message accepted for delivery")
        client.command("QUIT")
        client.close()
        wait_until(lambda: peer.messages, what="the relayed message")
        petrel.wait_queue_empty()
        [received] = peer.messages
        assert received.recipients[0][0] == "victim@remote.test"
        assert received.data.endswith(
            b"\r\nhello\r\n.\r\nMAIL FROM:<ceo@bank.test>\r\n"
            + b"RCPT TO:<smuggled@"
            + HOSTNAME.encode()
            + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nsend money\r\n"
        )
    finally:
        peer.stop()


@pytest.mark.parametrize(
    "recipient",
    [
        f"user%elsewhere.test@{HOSTNAME}",
        f"@{HOSTNAME}:user@elsewhere.test",
        f'"user@elsewhere.test"@{HOSTNAME}',
        f"elsewhere.test!user@{HOSTNAME}",
        "user@elsewhere.test",
        "user@[192.0.2.1]",
    ],
)
def test_open_relay_tricks_are_refused(
    petrel: PetrelServer, raw: RawClient, recipient: str
) -> None:
    raw.reply()
    raw.command("EHLO spammer.test")
    raw.command("MAIL FROM:<spam@spammer.test>")
    [answer] = raw.command(f"RCPT TO:<{recipient}>")
    assert answer.startswith("554 5.7.1"), answer
    assert "Relay access denied" in answer
    assert raw.command("DATA")[0].startswith("554 5.5.1")  # no valid recipients
    assert petrel.queue_files() == []


def test_relay_networks_may_relay(petrel_factory) -> None:
    server: PetrelServer = petrel_factory('[domains]\nrelay_networks = ["127.0.0.0/8"]\n')
    client = RawClient(server.connect())
    client.reply()
    client.command("EHLO trusted.test")
    client.command("MAIL FROM:<app@trusted.test>")
    assert client.command("RCPT TO:<someone@elsewhere.test>")[0].startswith("250 2.1.5")
    client.close()


def test_lmtp_domains_are_destinations_not_relays(petrel_factory) -> None:
    """Like Postfix's virtual_mailbox_domains: anyone may send to them, nobody through them."""
    server: PetrelServer = petrel_factory('[domains]\nlmtp = { "hosted.test" = "127.0.0.1:9" }\n')
    client = RawClient(server.connect())
    client.reply()
    client.command("EHLO stranger.test")
    client.command("MAIL FROM:<someone@stranger.test>")
    assert client.command("RCPT TO:<anyone@hosted.test>")[0].startswith("250 2.1.5")
    for trick in ("user%elsewhere.test@hosted.test", "elsewhere.test!user@hosted.test"):
        assert client.command(f"RCPT TO:<{trick}>")[0].startswith("554 5.7.1")
    assert client.command("RCPT TO:<user@elsewhere.test>")[0].startswith("554 5.7.1")
    # Once the domain has users here, the others are refused at RCPT, not bounced later.
    server.add_user("alice@hosted.test", "secret")
    assert client.command("RCPT TO:<alice@hosted.test>")[0].startswith("250 2.1.5")
    assert client.command("RCPT TO:<mallory@hosted.test>")[0].startswith("550 5.1.1")
    assert client.command("RCPT TO:<postmaster@hosted.test>")[0].startswith("250 2.1.5")
    client.close()


def test_bare_lf_and_nul_in_commands(petrel_factory) -> None:
    raw = RawClient(petrel_factory(REJECT).connect())
    raw.reply()
    raw.send(b"EHLO lf.test\n")
    assert raw.reply()[0].startswith("500 5.5.2")
    raw.send(b"EHLO a\rb.test\r\n")
    assert raw.reply()[0].startswith("500 5.5.2")
    raw.send(b"NOOP \x00\r\n")
    assert raw.reply()[0].startswith("500 5.5.2")
    assert raw.command("EHLO fine.test")[0].startswith("250-")


def test_bare_cr_and_nul_in_commands_when_normalizing(petrel: PetrelServer, raw: RawClient) -> None:
    raw.reply()
    raw.send(b"EHLO a\rb.test\n")
    assert raw.reply()[0].startswith("500 5.5.2")
    raw.send(b"NOOP \x00\n")
    assert raw.reply()[0].startswith("500 5.5.2")
    raw.send(b"NOOP\n")
    assert raw.reply() == ["250 2.0.0 OK"]


def test_command_line_too_long(petrel: PetrelServer, raw: RawClient) -> None:
    raw.reply()
    assert raw.command("NOOP " + "x" * 600)[0].startswith("500 5.5.2")
    # A flood without any newline is discarded in bounded memory, then answered once.
    raw.send(b"x" * 300_000 + b"\r\n")
    assert raw.reply()[0].startswith("500 5.5.2")
    assert raw.command("NOOP") == ["250 2.0.0 OK"]


def test_text_line_over_1000_octets_rejects_the_message(petrel: PetrelServer) -> None:
    client = RawClient(petrel.connect())
    _start_transaction(client, "longline")
    client.send(b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\n.\r\n")
    assert client.reply()[0].startswith("500 5.5.2")
    assert client.command("MAIL FROM:<a@attacker.test>")[0].startswith("250")
    client.command(f"RCPT TO:<longline@{HOSTNAME}>")
    client.command("DATA")
    client.send(b"Subject: ok\r\n\r\n" + b"a" * 998 + b"\r\n.\r\n")  # exactly 1000 with CRLF
    assert client.reply()[0].endswith("Message accepted for delivery")
    [message] = petrel.wait_for_messages("longline")
    assert b"Subject: ok" in message
    client.close()


def test_too_many_errors_disconnects(petrel_factory) -> None:
    server: PetrelServer = petrel_factory("[limits]\nerrors = 3\n")
    client = RawClient(server.connect())
    client.reply()
    assert client.command("FROB")[0].startswith("500 5.5.1")
    assert client.command("FROB")[0].startswith("500 5.5.1")
    client.send(b"FROB\r\n")
    assert client.reply()[0].startswith("500 5.5.1")
    assert client.reply() == [f"421 4.7.0 {HOSTNAME} Too many errors, closing connection"]
    assert client.at_eof()


def test_too_many_recipients(petrel_factory) -> None:
    server: PetrelServer = petrel_factory("[limits]\nrecipients = 2\n")
    client = RawClient(server.connect())
    client.reply()
    client.command("EHLO many.test")
    client.command("MAIL FROM:<a@many.test>")
    assert client.command(f"RCPT TO:<r1@{HOSTNAME}>")[0].startswith("250")
    assert client.command(f"RCPT TO:<r2@{HOSTNAME}>")[0].startswith("250")
    assert client.command(f"RCPT TO:<r3@{HOSTNAME}>") == ["452 4.5.3 Too many recipients"]
    client.close()


def test_connection_limits(petrel_factory) -> None:
    server: PetrelServer = petrel_factory(
        "[limits]\nconnections = 10\nconnections_per_ip = 2\nexempt_networks = []\n"
    )
    first = RawClient(server.connect())
    second = RawClient(server.connect())
    assert first.reply()[0].startswith("220 ")
    assert second.reply()[0].startswith("220 ")
    third = RawClient(server.connect())
    [refusal] = third.reply()
    assert refusal.startswith("421 4.7.0")
    assert third.at_eof()
    first.command("QUIT")
    first.close()

    # Once a slot is free again, a new client is served.
    def admitted() -> bool:
        probe = RawClient(server.connect())
        try:
            return probe.reply()[0].startswith("220 ")
        finally:
            probe.close()

    wait_until(admitted, what="a freed connection slot")
    second.close()
    third.close()


def test_idle_client_is_timed_out(petrel_factory) -> None:
    server: PetrelServer = petrel_factory('[limits]\ncommand_timeout = "1s"\n')
    client = RawClient(server.connect(timeout=30))
    client.reply()
    client.command("EHLO sleepy.test")
    assert client.reply() == [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"]
    assert client.at_eof()


def test_garbage_flood_does_not_hurt_other_clients(petrel: PetrelServer) -> None:
    """A client sending random bytes gets errors and is dropped; others are unaffected."""
    noisy = petrel.connect()
    noisy.sendall(bytes(range(256)) * 64 + b"\r\n" * 50)
    good = RawClient(petrel.connect())
    assert good.reply()[0].startswith("220 ")
    assert good.command("EHLO good.test")[0].startswith("250-")
    noisy.settimeout(10)
    received = b""
    try:
        while chunk := noisy.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    assert b"421 4.7.0" in received  # too many errors
    noisy.close()
    good.close()
