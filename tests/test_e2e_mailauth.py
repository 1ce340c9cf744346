"""Inbound checks end to end: a real ``petrel serve`` asks a real DNS server (Knot, on
loopback) for SPF, DKIM and DMARC records of mail that smtplib sends it, and the
delivered message says what it found in its Authentication-Results field.

Every sender domain lives in one test zone, ``test.``; the client is 127.0.0.1 and says
EHLO client.test.
"""

from __future__ import annotations

import base64
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import dns.message
import dns.query
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import HOSTNAME, PetrelServer, wait_until
from dns_server import DnsServer, txt
from smtp_peer import ScriptedPeer

# Mail::DKIM (Debian's libmail-dkim-perl): a signer Petrel does not use.
SIGNER = r"""
use strict;
use Mail::DKIM::Signer;
use Mail::DKIM::TextWrap;
my ($key, $domain, $selector) = @ARGV;
my $dkim = Mail::DKIM::Signer->new(
    Algorithm => "rsa-sha256", Method => "relaxed", Domain => $domain,
    Selector => $selector, KeyFile => $key);
local $/;
my $message = <STDIN>;
$dkim->PRINT($message);
$dkim->CLOSE;
print $dkim->signature->as_string, "\r\n", $message;
"""


def _records(dkim_public: str) -> list[str]:
    hosts = [f"h{i}.loop A 192.0.2.1" for i in range(1, 12)]
    eleven = " ".join(f"a:h{i}.loop.test" for i in range(1, 12))
    return [
        f"client TXT {txt('v=spf1 ip4:127.0.0.1 -all')}",
        f"pass TXT {txt('v=spf1 ip4:127.0.0.1 -all')}",
        f"fail TXT {txt('v=spf1 -all')}",
        f"soft TXT {txt('v=spf1 ~all')}",
        f"neutral TXT {txt('v=spf1 ?all')}",
        "nospf A 192.0.2.1",
        f"loop TXT {txt(f'v=spf1 {eleven} -all')}",
        *hosts,
        # DMARC
        f"_dmarc.pass TXT {txt('v=DMARC1; p=reject')}",
        f"bank TXT {txt('v=spf1 -all')}",
        f"_dmarc.bank TXT {txt('v=DMARC1; p=reject')}",
        f"mail.relaxed TXT {txt('v=spf1 ip4:127.0.0.1 -all')}",
        f"_dmarc.relaxed TXT {txt('v=DMARC1; p=reject')}",
        f"mail.strict TXT {txt('v=spf1 ip4:127.0.0.1 -all')}",
        f"_dmarc.strict TXT {txt('v=DMARC1; p=reject; aspf=s')}",
        f"_dmarc.sp TXT {txt('v=DMARC1; p=none; sp=reject')}",
        f"_dmarc.pct TXT {txt('v=DMARC1; p=reject; pct=0')}",
        f"_dmarc.quar TXT {txt('v=DMARC1; p=quarantine')}",
        # DKIM
        f"_dmarc.signed TXT {txt('v=DMARC1; p=reject')}",
        f"s1._domainkey.signed TXT {txt(f'v=DKIM1; k=rsa; p={dkim_public}')}",
    ]


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[Path, str]:
    """A private key file for Mail::DKIM and the p= of its DKIM record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, base64.b64encode(public).decode()


@pytest.fixture
def zone(dns_server: DnsServer, rsa_key: tuple[Path, str]) -> DnsServer:
    dns_server.zone("test", _records(rsa_key[1]))
    return dns_server


def _checked(factory: Callable[..., PetrelServer], nameserver: str, more: str = "") -> PetrelServer:
    return factory(
        f"""
[dns]
nameservers = ["{nameserver}"]
timeout = "2s"

[authentication]
checks = true
{more}
"""
    )


def _message(author: str, subject: str, extra: str = "") -> bytes:
    return (
        f"From: {author}\r\nTo: someone@{HOSTNAME}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\n{extra}\r\n"
        f"Hello from {author}.\r\n"
    ).encode()


def _send(server: PetrelServer, sender: str, rcpt: str, message: bytes) -> None:
    with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=30) as c:
        c.sendmail(sender, [f"{rcpt}@{HOSTNAME}"], message)


def _results(message: bytes) -> str:
    """Our Authentication-Results field, unfolded, from a delivered message."""
    head = message.split(b"\n\n", 1)[0].decode()
    fields = head.replace("\n\t", " ").replace("\n ", " ").split("\n")
    ours = [f for f in fields if f.startswith(f"Authentication-Results: {HOSTNAME};")]
    assert len(ours) == 1, ours
    return ours[0]


def _delivered(server: PetrelServer, user: str) -> str:
    return _results(server.wait_for_messages(user)[0])


def test_spf_results_in_the_delivered_message(
    petrel_factory: Callable[..., PetrelServer], zone: DnsServer
) -> None:
    server = _checked(petrel_factory, zone.address)
    cases = {
        "pass": "spf=pass smtp.mailfrom=bounce@pass.test",
        "fail": "spf=fail smtp.mailfrom=bounce@fail.test",
        "soft": "spf=softfail smtp.mailfrom=bounce@soft.test",
        "neutral": "spf=neutral smtp.mailfrom=bounce@neutral.test",
        "nospf": "spf=none smtp.mailfrom=bounce@nospf.test",
        "loop": "spf=permerror (more than 10 DNS-querying terms) smtp.mailfrom=bounce@loop.test",
    }
    for name in cases:
        _send(server, f"bounce@{name}.test", name, _message(f"a@{name}.test", name))
    for name, expected in cases.items():
        field = _delivered(server, name)
        assert field.startswith(f"Authentication-Results: {HOSTNAME}; "), field
        assert expected in field
        assert "dkim=none" in field and "arc=none" in field
    # The null sender is checked as the HELO name (RFC 7208 §2.4).
    _send(server, "", "bounce", _message("a@client.test", "null sender"))
    assert "spf=pass smtp.helo=client.test" in _delivered(server, "bounce")
    # An SPF fail alone does not refuse by default; DMARC has no record for fail.test.
    assert "dmarc=none header.from=fail.test" in _delivered(server, "fail")


def test_spf_temperror_when_dns_times_out(
    petrel_factory: Callable[..., PetrelServer], silent_nameserver: str
) -> None:
    server = _checked(petrel_factory, silent_nameserver)
    _send(server, "bounce@pass.test", "user", _message("a@pass.test", "timeout"))
    field = _delivered(server, "user")
    assert "spf=temperror" in field and "smtp.mailfrom=bounce@pass.test" in field
    assert "dmarc=temperror" in field


def test_spf_reject_refuses_a_fail_only_when_configured(
    petrel_factory: Callable[..., PetrelServer], zone: DnsServer
) -> None:
    server = _checked(petrel_factory, zone.address, "spf_reject = true")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(server, "bounce@fail.test", "user", _message("a@fail.test", "spf fail"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.decode().startswith("5.7.23 SPF check failed")
    _send(server, "bounce@soft.test", "user", _message("a@soft.test", "softfail"))
    assert "spf=softfail" in _delivered(server, "user")


def test_dmarc_alignment_and_policies(
    petrel_factory: Callable[..., PetrelServer], zone: DnsServer
) -> None:
    server = _checked(petrel_factory, zone.address)
    # Aligned (strict and relaxed both) through SPF.
    _send(server, "bounce@pass.test", "aligned", _message("ceo@pass.test", "aligned"))
    assert "dmarc=pass (p=reject dis=none) header.from=pass.test" in _delivered(server, "aligned")
    # Relaxed alignment: mail.relaxed.test and relaxed.test share an organisation.
    _send(server, "x@mail.relaxed.test", "relaxed", _message("a@relaxed.test", "relaxed"))
    assert "dmarc=pass" in _delivered(server, "relaxed")
    # The same with aspf=s fails, and p=reject refuses it.
    refusals = {
        "strict": ("x@mail.strict.test", "a@strict.test"),
        "forged": ("bounce@pass.test", "ceo@bank.test"),
        "subdomain": ("bounce@pass.test", "a@sub.sp.test"),  # sp=reject
    }
    for user, (sender, author) in refusals.items():
        with pytest.raises(smtplib.SMTPDataError) as refused:
            _send(server, sender, user, _message(author, user))
        assert refused.value.smtp_code == 550
        text = refused.value.smtp_error.decode()
        assert text.startswith("5.7.1 Message refused: the DMARC policy of"), text
    # The organisation itself has p=none: delivered, the failure recorded.
    _send(server, "bounce@pass.test", "orgnone", _message("a@sp.test", "p none"))
    assert "dmarc=fail (p=none dis=none) header.from=sp.test" in _delivered(server, "orgnone")
    # p=quarantine, and p=reject with pct=0 (sampled out: the next milder policy), go to
    # the Junk folder; the inbox stays empty.
    _send(server, "bounce@pass.test", "quar", _message("a@quar.test", "quarantine"))
    _send(server, "bounce@pass.test", "pct", _message("a@pct.test", "pct zero"))
    for user, policy in (
        ("quar", "p=quarantine dis=quarantine"),
        ("pct", "p=reject dis=quarantine"),
    ):
        junk = server.mailbox(user) / ".Junk"
        found = wait_until(lambda j=junk: list((j / "new").glob("*")), what=f"{user}'s Junk")
        assert isinstance(found, list)
        assert f"dmarc=fail ({policy})" in _results(found[0].read_bytes())
        assert (junk / "cur").is_dir() and (junk / "tmp").is_dir()
        assert (junk / "maildirfolder").exists()
        assert server.messages(user) == []
    # Nothing refused was delivered or left in the queue.
    server.wait_queue_empty()
    for user in refusals:
        assert not server.mailbox(user).exists()


def test_dkim_signature_by_mail_dkim_verifies_and_forged_results_go(
    petrel_factory: Callable[..., PetrelServer], zone: DnsServer, rsa_key: tuple[Path, str]
) -> None:
    server = _checked(petrel_factory, zone.address)
    forged = (
        f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=bank.test\r\n"
        "Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n"
    )
    message = _message("news@signed.test", "signed", forged)
    signed = subprocess.run(
        ["perl", "-e", SIGNER, str(rsa_key[0]), "signed.test", "s1"],
        input=message,
        capture_output=True,
        check=True,
    ).stdout
    assert signed.startswith(b"DKIM-Signature:")
    # SPF passes for pass.test, which is not aligned with signed.test: DKIM carries DMARC.
    _send(server, "bounce@pass.test", "signed", signed)
    delivered = server.wait_for_messages("signed")[0]
    field = _results(delivered)
    assert "dkim=pass header.d=signed.test header.s=s1" in field
    assert "dmarc=pass (p=reject dis=none) header.from=signed.test" in field
    assert b"dkim=pass header.d=bank.test" not in delivered
    assert b"Authentication-Results: other.example; spf=pass" in delivered
    # The same message altered on the way fails, and p=reject refuses it.
    tampered = signed.replace(b"Hello from", b"Goodbye from")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(server, "bounce@pass.test", "tampered", tampered)
    assert refused.value.smtp_code == 550
    assert "event=authentication" in server.log_text() and "dkim=fail" in server.log_text()


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    """The remote domain's MX: a loopback SMTP sink that records what it gets."""
    sink = ScriptedPeer().start()
    yield sink
    sink.stop()


def _txt_lookup(dns_server: DnsServer) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc, asking the test's DNS server (nothing else)."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), "TXT")
        reply = dns.query.udp(query, "127.0.0.1", timeout, int(dns_server.port))
        for rrset in reply.answer:
            for record in rrset:
                return b"".join(record.strings)
        return None

    return lookup


def test_alias_forward_to_a_remote_domain_carries_a_valid_arc_set(
    tmp_path: Path, zone: DnsServer, rsa_key: tuple[Path, str], peer: ScriptedPeer
) -> None:
    server = PetrelServer(
        tmp_path / "forwarder",
        f"""
[dns]
nameservers = ["{zone.address}"]

[authentication]
checks = true

[delivery]
dns = false
hosts = {{ "elsewhere.test" = ["127.0.0.1:{peer.port}"] }}

[[dkim.sign]]
domain = "petrel.test"
selector = "arc"
""",
    )
    server.root.mkdir()
    server.write_config()
    made = server.petrel_cli("dkim", "keygen", "petrel.test", "--selector", "arc")
    assert made.returncode == 0, made.stderr
    name, _, _, data = made.stdout.strip().split(" ", 3)
    zone.zone("test", [*_records(rsa_key[1]), f"{name} TXT {data}"])
    (server.data_dir / "aliases").write_text("fwd: friend@elsewhere.test, keeper\n")
    server.start()
    try:
        message = _message("news@signed.test", "forwarded")
        signed = subprocess.run(
            ["perl", "-e", SIGNER, str(rsa_key[0]), "signed.test", "s1"],
            input=message,
            capture_output=True,
            check=True,
        ).stdout
        _send(server, "bounce@pass.test", "fwd", signed)
        wait_until(lambda: peer.messages, what="the forwarded copy at the remote peer")
        forwarded = bytes(peer.messages[0].data)
        status, sets, reason = dkim.arc_verify(forwarded, dnsfunc=_txt_lookup(zone))
        assert status == dkim.CV_Pass, reason
        assert sets[0]["as-domain"] == b"petrel.test" and sets[0]["cv"] == dkim.CV_None
        aar = sets[0]["aar-value"].decode()
        assert f"i=1; {HOSTNAME};" in aar and "dkim=pass" in aar and "dmarc=pass" in aar
        assert forwarded.startswith(b"ARC-Seal: i=1;")
        # An independent validator agrees (Mail::DKIM; the seal's RSA is OpenSSL's).
        checked = subprocess.run(
            ["perl", str(Path(__file__).parent / "dkim_verify" / "arc_verify.pl"), zone.address],
            input=forwarded,
            capture_output=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr.decode()
        assert checked.stdout.decode().split()[0] == "pass", checked.stdout.decode()
        # The original signature still verifies at the next hop, and the local copy
        # (the alias's other member) is delivered as well.
        assert dkim.verify(forwarded, dnsfunc=_txt_lookup(zone))
        assert b"ARC-Seal" in server.wait_for_messages("keeper")[0]
    finally:
        server.kill()


def test_quarantine_survives_a_crash_in_the_envelope(
    petrel_factory: Callable[..., PetrelServer], zone: DnsServer
) -> None:
    """The Junk verdict is in the queued envelope: after kill -9 and a restart the
    message still goes to Junk, though the checks are not run again."""
    server = _checked(petrel_factory, zone.address)
    maildir = server.mailbox("held")
    maildir.mkdir(parents=True)
    (maildir / ".Junk").write_text("in the way: delivery defers\n")
    _send(server, "bounce@pass.test", "held", _message("a@quar.test", "quarantined"))
    wait_until(lambda: "event=deferred" in server.log_text(), what="the deferral")
    server.kill()
    (maildir / ".Junk").unlink()
    server.start()
    flushed = server.petrel_cli("queue", "flush")
    assert flushed.returncode == 0, flushed.stderr
    found = wait_until(lambda: list((maildir / ".Junk" / "new").glob("*")), what="Junk")
    assert isinstance(found, list) and len(found) == 1
    assert "dmarc=fail (p=quarantine dis=quarantine)" in _results(found[0].read_bytes())
    assert server.messages("held") == []


def test_forged_results_go_from_strangers_mail_with_the_checks_off(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory("[authentication]\nchecks = false\n")
    forged = f"Authentication-Results: {HOSTNAME.upper()}; dmarc=pass header.from=bank.test\r\n"
    _send(server, "ceo@bank.test", "user", _message("ceo@bank.test", "unchecked", forged))
    delivered = server.wait_for_messages("user")[0]
    assert b"Authentication-Results" not in delivered and b"Subject: unchecked" in delivered


def test_strangers_mail_held_for_checking_is_bounded_in_memory(
    petrel_factory: Callable[..., PetrelServer], zone: DnsServer
) -> None:
    """Checked mail is held whole until its end: past ``limits.checks_memory`` a message
    gets 452 4.3.1 (the sender retries), and the session and smaller mail go on."""
    server = _checked(petrel_factory, zone.address, "\n[limits]\nchecks_memory = 100000\n")
    big = _message("a@pass.test", "big") + (b"y" * 70 + b"\r\n") * 2000
    with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        c.mail("bounce@pass.test")
        c.rcpt(f"user@{HOSTNAME}")
        code, text = c.data(big)
        assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
        c.sendmail("bounce@pass.test", [f"user@{HOSTNAME}"], _message("a@pass.test", "small"))
    [message] = server.wait_for_messages("user")
    assert b"Subject: small" in message
    assert "spf=pass" in _results(message)
