"""Real clients nobody here wrote — smtplib, aiosmtplib, swaks — against ``petrel serve``."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import smtplib
import subprocess
from email.message import EmailMessage

import aiosmtplib
import pytest

from conftest import HOSTNAME, PetrelServer, RawClient


def _message(subject: str, to: str, body: str = "hello\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@client.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def test_smtplib_send_message(petrel: PetrelServer) -> None:
    with smtplib.SMTP(petrel.host, petrel.port, local_hostname="client.test") as client:
        code, _ = client.ehlo()
        assert code == 250
        assert client.has_extn("pipelining") and client.has_extn("smtputf8")
        assert int(client.esmtp_features["size"]) == 20_000_000
        refused = client.send_message(_message("via smtplib", f"ann@{HOSTNAME}"))
        assert refused == {}
    [raw] = petrel.wait_for_messages("ann")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "via smtplib"
    assert parsed["Return-Path"] == "<sender@client.test>"
    assert parsed.get_content() == "hello\n"


def test_smtplib_reports_refused_recipients(petrel: PetrelServer) -> None:
    with smtplib.SMTP(petrel.host, petrel.port) as client:
        refused = client.sendmail(
            "sender@client.test",
            [f"ok@{HOSTNAME}", "victim@elsewhere.test"],
            b"Subject: partial\r\n\r\nbody\r\n",
        )
    assert refused == {
        "victim@elsewhere.test": (554, b"5.7.1 <victim@elsewhere.test>: Relay access denied")
    }
    assert petrel.wait_for_messages("ok")


def test_smtplib_all_recipients_refused(petrel: PetrelServer) -> None:
    with (
        smtplib.SMTP(petrel.host, petrel.port) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        client.sendmail("s@client.test", ["a@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")


def test_smtplib_size_declared_too_big(petrel_factory) -> None:
    server: PetrelServer = petrel_factory("[limits]\nmessage_size = 1000\n")
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo()
        code, text = client.mail("s@client.test", ["SIZE=5000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        client.rset()
        client.mail("s@client.test")
        client.rcpt(f"big@{HOSTNAME}")
        code, text = client.data(
            b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n" * 10 + b"y" * 900 + b"\r\n"
        )
        assert (code, text[:5]) == (552, b"5.3.4")
        # The session goes on: a small message after the big one is accepted.
        client.mail("s@client.test")
        client.rcpt(f"big@{HOSTNAME}")
        code, _ = client.data(b"Subject: small\r\n\r\nsmall\r\n")
        assert code == 250
    [message] = server.wait_for_messages("big")
    assert b"Subject: small" in message


def test_aiosmtplib_utf8_and_8bit(petrel: PetrelServer) -> None:
    """SMTPUTF8 address and an 8-bit body arrive byte-exact (LF line ends in Maildir)."""
    body = "Grüße aus Köln — ½ € ✓\n".encode() + bytes(range(0x80, 0x100)) + b"\n"
    raw_message = (
        b"From: j\xc3\xb6rg@client.test\r\nTo: m\xc3\xbcller@" + HOSTNAME.encode() + b"\r\n"
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body.replace(b"\n", b"\r\n")
    )

    async def send() -> None:
        await aiosmtplib.send(
            raw_message,
            sender="jörg@client.test",
            recipients=[f"müller@{HOSTNAME}"],
            hostname=petrel.host,
            port=petrel.port,
            mail_options=["BODY=8BITMIME", "SMTPUTF8"],
            start_tls=False,  # plaintext on purpose: STARTTLS has its own tests
        )

    asyncio.run(send())
    [delivered] = petrel.wait_for_messages("müller")
    assert delivered.endswith(b"\n\n" + body)
    assert "Return-Path: <jörg@client.test>".encode() in delivered
    assert b"with UTF8SMTP id" in delivered


def test_aiosmtplib_many_concurrent_clients_delivered_exactly_once(petrel_factory) -> None:
    """100 concurrent clients × 5 messages each: 500 messages, each delivered once."""
    petrel: PetrelServer = petrel_factory("[limits]\nconnections_per_ip = 200\n")

    async def client(n: int) -> None:
        async with aiosmtplib.SMTP(hostname=petrel.host, port=petrel.port, start_tls=False) as smtp:
            for i in range(5):
                msg = _message(f"msg {n}-{i}", f"load@{HOSTNAME}", f"client {n} message {i}\n")
                msg["Message-ID"] = f"<{n}.{i}@client.test>"
                await smtp.send_message(msg)

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(100)))

    asyncio.run(main())
    messages = petrel.wait_for_messages("load", count=500, timeout=60)
    ids = [email.message_from_bytes(m, policy=email.policy.default)["Message-ID"] for m in messages]
    assert len(ids) == 500
    assert len(set(ids)) == 500
    petrel.wait_queue_empty()


swaks = shutil.which("swaks")


def _swaks(petrel: PetrelServer, to: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run swaks against ``petrel`` from swaks@client.test to ``to``; assert it succeeded."""
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"{petrel.host}:{petrel.port}",
            "--from",
            "swaks@client.test",
            "--to",
            to,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.skipif(swaks is None, reason="swaks is installed by `make test` (system-deps)")
def test_swaks(petrel: PetrelServer) -> None:
    result = _swaks(
        petrel,
        f"swaks-user@{HOSTNAME}",
        "--helo",
        "swaks.client.test",
        "--header",
        "Subject: from swaks",
        "--body",
        "sent by swaks",
    )
    assert "Message accepted for delivery" in result.stdout
    [message] = petrel.wait_for_messages("swaks-user")
    assert b"Subject: from swaks" in message
    assert b"sent by swaks" in message


@pytest.mark.skipif(swaks is None, reason="swaks is installed by `make test` (system-deps)")
def test_swaks_pipelining(petrel: PetrelServer) -> None:
    _swaks(petrel, f"pipe@{HOSTNAME}", "--pipeline", "--body", "pipelined by swaks")
    assert petrel.wait_for_messages("pipe")[0].rstrip().endswith(b"pipelined by swaks")


# -- LF-only clients: [policy] bare_lf = "normalize" (the default) -----------------------------

LF_RELAY = """
[domains]
relay_networks = ["127.0.0.0/8"]
"""  # remote.test has no [delivery] hosts entry and DNS is off: its mail stays spooled


def _spooled(petrel: PetrelServer) -> bytes:
    """The message bytes of the one file in the spool's active/ (see queue/spool.py)."""
    [name] = petrel.queue_files()
    content = (petrel.data_dir / "queue" / "active" / name).read_bytes()
    head, _, rest = content.partition(b"\n")
    envelope_length = int(head.split()[1])
    message = rest[envelope_length + 1 :]
    return message[: message.rindex(b"\nPETREL-END ")]


def _assert_crlf_only(message: bytes) -> None:
    assert b"\n" not in message.replace(b"\r\n", b""), message
    assert b"\r" not in message.replace(b"\r\n", b""), message


curl = shutil.which("curl")


@pytest.mark.skipif(curl is None, reason="curl is not installed")
def test_curl_without_crlf_delivers_an_lf_only_file(petrel_factory, tmp_path) -> None:
    petrel: PetrelServer = petrel_factory(LF_RELAY)
    mail = tmp_path / "mail.txt"
    # curl sends the file as it is (a "." line after an LF is not doubled), then CRLF.CRLF.
    mail.write_bytes(b"From: a@client.test\nSubject: from curl\n\nline one\n.\nline two\n")
    assert curl is not None
    url = f"smtp://{petrel.host}:{petrel.port}"
    envelope = ["--mail-from", "a@client.test", "--mail-rcpt", "x@remote.test"]
    result = subprocess.run(
        [curl, "-sS", url, *envelope, "--mail-rcpt", f"ann@{HOSTNAME}", "-T", str(mail)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    [local] = petrel.wait_for_messages("ann")
    assert local.endswith(b"\nSubject: from curl\n\nline one\n.\nline two\n\n")
    spooled = _spooled(petrel)
    _assert_crlf_only(spooled)
    assert spooled.endswith(b"\r\nSubject: from curl\r\n\r\nline one\r\n.\r\nline two\r\n\r\n")


def test_smtplib_sendmail_with_lf_only_bytes(petrel_factory) -> None:
    petrel: PetrelServer = petrel_factory(LF_RELAY)
    text = b"Subject: lf only\n\nline one\n.\n..two dots\nend\n"
    with smtplib.SMTP(petrel.host, petrel.port, local_hostname="client.test") as client:
        # smtplib sends bytes as they are, with a "." doubled after every LF.
        assert client.sendmail("a@client.test", ["x@remote.test", f"ann@{HOSTNAME}"], text) == {}
    [local] = petrel.wait_for_messages("ann")
    assert b"\nSubject: lf only\n\nline one\n.\n..two dots\nend\n" in local
    spooled = _spooled(petrel)
    _assert_crlf_only(spooled)
    assert b"\r\nSubject: lf only\r\n\r\nline one\r\n.\r\n..two dots\r\nend\r\n" in spooled


def test_nc_style_lf_only_session(petrel: PetrelServer) -> None:
    """``nc`` without ``-C``: every command works; only CRLF "." CRLF ends the text."""
    raw = RawClient(petrel.connect())
    assert raw.reply()[0].startswith("220 ")

    def say(line: bytes) -> list[str]:
        raw.send(line + b"\n")
        return raw.reply()

    assert say(b"EHLO nc.test")[0].startswith("250-")
    assert say(b"NOOP") == ["250 2.0.0 OK"]
    assert say(b"MAIL FROM:<a@client.test>")[0].startswith("250 ")
    assert say(f"RCPT TO:<ann@{HOSTNAME}>".encode())[0].startswith("250 ")
    assert say(b"DATA")[0].startswith("354 ")
    raw.send(b"Subject: nc\n\ntyped by hand\n.\nstill text\n")  # ".\n" does not end it
    raw.send(b"\r\n.\r\n")
    assert raw.reply()[0].endswith("Message accepted for delivery")
    assert say(b"QUIT")[0].startswith("221 ")
    raw.close()
    [message] = petrel.wait_for_messages("ann")
    assert message.endswith(b"Subject: nc\n\ntyped by hand\n.\nstill text\n\n")
