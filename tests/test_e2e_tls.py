"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314) against a real ``petrel serve``."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess

import aiosmtplib
import pytest

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until

SUBMISSIONS = """
[[listener]]
address = "127.0.0.1:0"
mode = "submissions"
"""


def _peer_sha256(host: str, port: int, ctx: ssl.SSLContext, starttls: bool) -> str:
    """SHA-256 of the certificate the server presents to a new session."""
    sock = socket.create_connection((host, port), timeout=10)
    client = RawClient(sock)
    if starttls:
        client.reply()
        client.command("EHLO fp.client.test")
        assert client.command("STARTTLS")[0].startswith("220")
        client.starttls(ctx)
    else:
        client.sock = ctx.wrap_socket(sock, server_hostname=HOSTNAME)
        assert client.reply()[0].startswith("220 ")
    assert isinstance(client.sock, ssl.SSLSocket)
    der = client.sock.getpeercert(binary_form=True)
    client.command("QUIT")
    client.close()
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_smtplib_starttls_then_send(petrel: PetrelServer) -> None:
    with smtplib.SMTP(petrel.host, petrel.port, local_hostname="tls.client.test") as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, text = client.starttls(context=petrel.client_tls())
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        client.ehlo()
        assert not client.has_extn("starttls"), "STARTTLS must not be offered under TLS"
        refused = client.sendmail(
            "s@client.test", [f"tls@{HOSTNAME}"], b"Subject: over TLS\r\n\r\nsecret\r\n"
        )
        assert refused == {}
    [message] = petrel.wait_for_messages("tls")
    assert b"with ESMTPS id" in message
    assert b"(using TLSv1.3 with cipher " in message
    assert b"fingerprint" not in message


def test_aiosmtplib_starttls(petrel: PetrelServer) -> None:
    async def send() -> None:
        await aiosmtplib.send(
            b"Subject: aio tls\r\n\r\nhello\r\n",
            sender="s@client.test",
            recipients=[f"aio@{HOSTNAME}"],
            hostname=petrel.host,
            port=petrel.port,
            start_tls=True,
            tls_context=petrel.client_tls(),
        )

    asyncio.run(send())
    [message] = petrel.wait_for_messages("aio")
    assert b"with ESMTPS id" in message


def test_self_signed_certificate_matches_hostname_and_is_private(petrel: PetrelServer) -> None:
    key = petrel.data_dir / "tls" / "key.pem"
    assert key.stat().st_mode & 0o077 == 0
    assert "event=tls-certificate" in petrel.log_text()
    assert "sha256=" in petrel.log_text()
    # The client context verifies the chain *and* the host name (also "localhost").
    _peer_sha256(petrel.host, petrel.port, petrel.client_tls(), starttls=True)
    ctx = petrel.client_tls()
    sock = socket.create_connection((petrel.host, petrel.port), timeout=10)
    client = RawClient(sock)
    client.reply()
    client.command("EHLO x.test")
    client.command("STARTTLS")
    client.starttls(ctx, server_hostname="localhost")
    assert client.command("NOOP") == ["250 2.0.0 OK"]
    client.close()


def test_starttls_injection_is_discarded(petrel: PetrelServer, raw: RawClient) -> None:
    """CVE-2011-0411: commands pipelined behind STARTTLS must never be executed."""
    raw.reply()
    raw.command("EHLO attacker.test")
    raw.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<x@y>\r\n")
    assert raw.reply() == ["220 2.0.0 Ready to start TLS"]
    raw.starttls(petrel.client_tls())
    # The first reply under TLS answers *this* command, not the injected RSET or MAIL,
    # and the state was reset: MAIL needs a fresh EHLO.
    assert raw.command("MAIL FROM:<a@client.test>") == ["503 5.5.1 Polite people say HELO first"]
    assert raw.command("NOOP") == ["250 2.0.0 OK"]
    ehlo = raw.command("EHLO attacker.test")
    assert ehlo[0].startswith("250-")
    assert "250-STARTTLS" not in ehlo
    assert raw.command("MAIL FROM:<a@client.test>")[0].startswith("250 2.1.0")


def test_starttls_twice_and_with_argument(petrel: PetrelServer, raw: RawClient) -> None:
    raw.reply()
    raw.command("EHLO c.test")
    assert raw.command("STARTTLS now")[0].startswith("501 5.5.4")
    assert raw.command("STARTTLS") == ["220 2.0.0 Ready to start TLS"]
    raw.starttls(petrel.client_tls())
    raw.command("EHLO c.test")
    assert raw.command("STARTTLS") == ["503 5.5.1 TLS already active"]


def test_failed_handshake_closes_and_is_logged(petrel: PetrelServer, raw: RawClient) -> None:
    raw.reply()
    raw.command("EHLO c.test")
    assert raw.command("STARTTLS")[0].startswith("220")
    raw.send(b"this is not a TLS ClientHello\r\n" * 4)
    assert raw.at_eof()
    wait_until(lambda: "event=tls-failed" in petrel.log_text(), what="the tls-failed log line")
    # The server is unharmed.
    other = RawClient(petrel.connect())
    assert other.reply()[0].startswith("220 ")
    other.close()


def test_implicit_tls_on_submissions(petrel_factory) -> None:
    petrel: PetrelServer = petrel_factory(SUBMISSIONS)
    port = petrel.ports["submissions"]
    with smtplib.SMTP_SSL(petrel.host, port, context=petrel.client_tls()) as client:
        code, _ = client.ehlo("implicit.client.test")
        assert code == 250
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
    # A plaintext client on the TLS port gets no greeting, only a closed connection.
    plain = RawClient(petrel.connect(mode="submissions"))
    plain.send(b"EHLO plain.test\r\n")
    assert plain.at_eof()
    plain.close()


def test_configured_certificate_and_sighup_reload(petrel_factory, tmp_path) -> None:
    from petrel.server.tls import generate_self_signed

    own = tmp_path / "own"
    own.mkdir()
    cert, key = generate_self_signed(own, HOSTNAME)
    petrel: PetrelServer = petrel_factory(f'{SUBMISSIONS}\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    ctx = ssl.create_default_context(cafile=str(cert))
    before = _peer_sha256(petrel.host, petrel.port, ctx, starttls=True)
    assert not (petrel.data_dir / "tls" / "cert.pem").exists()

    # A session that is already under TLS survives the reload untouched.
    old = RawClient(petrel.connect())
    old.reply()
    old.command("EHLO old.test")
    old.command("STARTTLS")
    old.starttls(ctx)

    generate_self_signed(own, HOSTNAME)  # new key and certificate in place
    new_ctx = ssl.create_default_context(cafile=str(cert))
    assert petrel.process is not None
    petrel.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "event=tls-reloaded" in petrel.log_text(), what="the reload")
    after = _peer_sha256(petrel.host, petrel.port, new_ctx, starttls=True)
    implicit = _peer_sha256(petrel.host, petrel.ports["submissions"], new_ctx, starttls=False)
    assert before != after == implicit
    assert old.command("EHLO old.test")[0].startswith("250-")
    assert old.command("QUIT")[0].startswith("221")
    old.close()


def test_tls_1_2_client_is_served(petrel: PetrelServer, raw: RawClient) -> None:
    ctx = petrel.client_tls()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    raw.reply()
    raw.command("EHLO old.client.test")
    raw.command("STARTTLS")
    raw.starttls(ctx)
    assert isinstance(raw.sock, ssl.SSLSocket) and raw.sock.version() == "TLSv1.2"
    assert raw.command("NOOP") == ["250 2.0.0 OK"]


def test_server_context_refuses_old_tls(tmp_path) -> None:
    from petrel.server.tls import generate_self_signed, make_context

    ctx = make_context(*generate_self_signed(tmp_path, HOSTNAME))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by make system-deps")
def test_swaks_starttls(petrel: PetrelServer) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"{petrel.host}:{petrel.port}",
            "-tls",
            "--from",
            "swaks@client.test",
            "--to",
            f"swaks-tls@{HOSTNAME}",
            "--body",
            "tls body",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TLS started" in result.stdout
    assert b"with ESMTPS id" in petrel.wait_for_messages("swaks-tls")[0]


def test_implicit_tls_handshake_failure_is_logged(petrel_factory) -> None:
    """A plaintext client on the submissions port: logged, closed, others still served."""
    petrel: PetrelServer = petrel_factory(SUBMISSIONS)
    port = petrel.ports["submissions"]
    plain = RawClient(petrel.connect(mode="submissions"))
    local_port = plain.sock.getsockname()[1]
    plain.send(b"EHLO x\r\n")
    assert plain.at_eof()
    plain.close()
    line = wait_until(
        lambda: next((x for x in petrel.log_text().splitlines() if "event=tls-failed" in x), None),
        what="the tls-failed log line",
    )
    assert f"client=127.0.0.1:{local_port}" in str(line) and "mode=submissions" in str(line)
    # A client that stalls without a ClientHello does not block the others either.
    silent = socket.create_connection((petrel.host, port), timeout=10)
    with smtplib.SMTP_SSL(petrel.host, port, context=petrel.client_tls()) as client:
        assert client.ehlo("after.client.test")[0] == 250
        assert client.noop()[0] == 250
    # Nor does it delay a clean shutdown.
    assert petrel.stop() == 0
    silent.close()


def test_stalled_implicit_tls_handshakes_count_against_connection_limits(petrel_factory) -> None:
    """Sockets that never send a ClientHello cannot pile up past connections_per_ip."""
    petrel: PetrelServer = petrel_factory(
        SUBMISSIONS + "[limits]\nconnections_per_ip = 2\nexempt_networks = []\n"
    )
    port = petrel.ports["submissions"]
    stalled = [socket.create_connection((petrel.host, port), timeout=10) for _ in range(2)]
    # The third is closed at once, long before the 30 s handshake timeout.
    third = RawClient(petrel.connect(mode="submissions"))
    assert third.at_eof()
    third.close()
    assert "reason=too-many-connections-per-ip" in petrel.log_text()
    for sock in stalled:
        sock.close()

    def served() -> bool:
        try:
            with smtplib.SMTP_SSL(petrel.host, port, context=petrel.client_tls()) as client:
                return client.ehlo("freed.client.test")[0] == 250
        except (smtplib.SMTPServerDisconnected, ConnectionError, ssl.SSLError):
            return False

    wait_until(served, what="a handshake slot freed by the stalled clients")


def test_petrel_reload_cli_swaps_certificate(petrel_factory, tmp_path) -> None:
    """``petrel reload`` finds the server by its pid file and new sessions see the new cert."""
    from petrel.server.tls import generate_self_signed

    own = tmp_path / "reload-cert"
    own.mkdir()
    cert, key = generate_self_signed(own, HOSTNAME)
    petrel: PetrelServer = petrel_factory(f'{SUBMISSIONS}\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    assert petrel.process is not None
    pid_file = petrel.data_dir / "petrel.pid"
    assert pid_file.read_text().strip() == str(petrel.process.pid)
    before_ctx = ssl.create_default_context(cafile=str(cert))
    before = _peer_sha256(petrel.host, petrel.port, before_ctx, starttls=True)

    # Replace the configured files (new key, new certificate), then ask for a reload.
    replacement = tmp_path / "replacement"
    replacement.mkdir()
    new_cert, new_key = generate_self_signed(replacement, HOSTNAME)
    shutil.copy(new_key, key)
    shutil.copy(new_cert, cert)
    result = petrel.petrel_cli("reload")
    assert result.returncode == 0, result.stderr
    assert f"pid {petrel.process.pid}" in result.stdout
    wait_until(lambda: "event=tls-reloaded" in petrel.log_text(), what="the reload")
    new_ctx = ssl.create_default_context(cafile=str(new_cert))
    after = _peer_sha256(petrel.host, petrel.port, new_ctx, starttls=True)
    implicit = _peer_sha256(petrel.host, petrel.ports["submissions"], new_ctx, starttls=False)
    assert before != after == implicit
    # The old certificate is no longer presented to anyone.
    with pytest.raises(ssl.SSLCertVerificationError):
        _peer_sha256(petrel.host, petrel.port, before_ctx, starttls=True)

    # A clean shutdown removes the pid file; reload then refuses.
    assert petrel.stop() == 0
    assert not pid_file.exists()
    missing = petrel.petrel_cli("reload")
    assert missing.returncode == 1 and "is petrel serve running?" in missing.stderr


def test_petrel_reload_refuses_a_stale_pid_file(petrel_factory) -> None:
    petrel: PetrelServer = petrel_factory()
    petrel.kill()  # a crash leaves the pid file behind
    pid_file = petrel.data_dir / "petrel.pid"
    assert pid_file.exists()
    # The pid now belongs to some other program: it must not be signalled.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{bystander.pid}\n")
        refused = petrel.petrel_cli("reload")
        assert refused.returncode == 1
        assert f"process {bystander.pid} is not petrel serve" in refused.stderr
        assert bystander.poll() is None, "SIGHUP reached a process that is not petrel"
    finally:
        bystander.kill()
        bystander.wait()
    pid_file.write_text(f"{bystander.pid}\n")  # now no such process at all
    gone = petrel.petrel_cli("reload")
    assert gone.returncode == 1 and "stale" in gone.stderr
    pid_file.write_text("garbage\n")
    assert petrel.petrel_cli("reload").returncode == 1
