"""SMTP AUTH (RFC 4954) and submission (RFC 6409) against a real ``petrel serve``."""

from __future__ import annotations

import base64
import email
import email.policy
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until
from test_scram_vector import client_final

SUBMISSION = """
[[listener]]
address = "127.0.0.1:0"
mode = "submission"

[[listener]]
address = "127.0.0.1:0"
mode = "submissions"
"""
USER = f"willie@{HOSTNAME}"
PASSWORD = "funsmtp"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def server(petrel_factory) -> PetrelServer:
    petrel: PetrelServer = petrel_factory(SUBMISSION + "[auth]\nmax_failures = 4\n")
    petrel.add_user(USER, PASSWORD)
    (petrel.data_dir / "aliases").write_text("sales: willie\n")
    return petrel


def tls_client(petrel: PetrelServer, mode: str = "smtp") -> RawClient:
    client = RawClient(petrel.connect(mode=mode))
    client.reply()
    client.command("EHLO client.test")
    assert client.command("STARTTLS")[0].startswith("220")
    client.starttls(petrel.client_tls())
    return client


def test_seed_auth_login_under_tls_byte_exact(server: PetrelServer) -> None:
    client = tls_client(server)
    ehlo = client.command("EHLO wheelersoftware.com")
    assert "250-AUTH PLAIN LOGIN SCRAM-SHA-256" in ehlo
    assert client.command("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert client.command("d2lsbGll") == ["334 UGFzc3dvcmQ6"]  # "willie": a bare name
    assert client.command("ZnVuc210cA==") == ["235 2.0.0 OK Authenticated"]
    assert client.command("MAIL FROM:<darth.vader@deathstar.com>")[0].startswith("553 5.7.1")
    assert client.command(f"MAIL FROM:<{USER}>")[0].startswith("250 2.1.0")
    # Relay to a remote domain is allowed once authenticated.
    assert client.command("RCPT TO:<friend@remote.example>")[0].startswith("250 2.1.5")
    log = server.log_text()
    assert "ZnVuc210cA" not in log and PASSWORD not in log
    assert "outcome=success" in log


def test_plain_initial_response_and_challenge(server: PetrelServer) -> None:
    client = tls_client(server)
    client.command("EHLO c.test")
    token = b64(f"\0{USER}\0{PASSWORD}")
    assert client.command("AUTH PLAIN") == ["334 "]
    assert client.command(token) == ["235 2.0.0 OK Authenticated"]
    assert client.command(f"AUTH PLAIN {token}") == ["503 5.5.1 Already authenticated"]
    client.close()
    other = tls_client(server)
    other.command("EHLO c.test")
    assert other.command(f"AUTH PLAIN {token}") == ["235 2.0.0 OK Authenticated"]


def test_failures_bad_base64_cancel_unknown_mechanism(server: PetrelServer) -> None:
    client = tls_client(server)
    client.command("EHLO c.test")
    bad = b64(f"\0{USER}\0wrong")
    assert client.command(f"AUTH PLAIN {bad}")[0].startswith("535 5.7.8")
    assert client.command("AUTH PLAIN !!notbase64")[0].startswith("501 5.5")
    assert client.command("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert client.command("*")[0].startswith("501 5.5.2")
    assert client.command("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert client.command("@@@")[0].startswith("501 5.5.2")
    assert client.command("AUTH CRAM-MD5")[0].startswith("504 5.5.4")
    assert client.command("MAIL FROM:<a@client.test>")[0].startswith("250")
    assert client.command(f"AUTH PLAIN {bad}")[0].startswith("503 5.5.1")
    assert "wrong" not in server.log_text()


def test_auth_refused_in_plaintext(server: PetrelServer) -> None:
    client = RawClient(server.connect())
    client.reply()
    ehlo = client.command("EHLO c.test")
    assert not any("AUTH" in line for line in ehlo)
    assert client.command(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}") == [
        "538 5.7.11 Encryption required for requested authentication mechanism;"
        " use STARTTLS first, or the submissions port (implicit TLS)"
    ]


def test_allow_plaintext_auth_for_test_rigs(petrel_factory) -> None:
    petrel: PetrelServer = petrel_factory("[auth]\nallow_plaintext_auth = true\n")
    petrel.add_user(USER, PASSWORD)
    with smtplib.SMTP(petrel.host, petrel.port) as client:
        client.ehlo()
        assert "LOGIN" in client.esmtp_features["auth"]
        client.login(USER, PASSWORD)


def test_auth_initial_response_not_base64_is_501_5_5_2(petrel_factory) -> None:
    petrel: PetrelServer = petrel_factory("[auth]\nallow_plaintext_auth = true\n")
    client = RawClient(petrel.connect())
    client.reply()
    client.command("EHLO c.test")
    for bad in ("not*base64!", "dXNlcg"):  # RFC 4954 §4: 501 for what cannot be decoded
        assert client.command(f"AUTH PLAIN {bad}") == ["501 5.5.2 Invalid base64 data"]
    assert client.command("AUTH PLAIN a b")[0] == (
        "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
    )
    client.close()


def test_relay_denied_before_auth_allowed_after(server: PetrelServer) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.starttls(context=server.client_tls())
        client.ehlo()
        client.mail("s@client.test")
        code, _ = client.rcpt("victim@remote.example")
        assert code == 554
        client.rset()
        client.login(USER, PASSWORD)
        client.mail(USER)
        code, _ = client.rcpt("friend@remote.example")
        assert code == 250
        code, _ = client.data(b"Subject: relayed\r\n\r\nhi\r\n")
        assert code == 250


def test_scram_sha_256_with_independent_client(server: PetrelServer) -> None:
    client = tls_client(server)
    client.command("EHLO c.test")
    first_bare = f"n={USER},r=clientnonce123456"
    [challenge] = client.command(f"AUTH SCRAM-SHA-256 {b64('n,,' + first_bare)}")
    assert challenge.startswith("334 ")
    server_first = base64.b64decode(challenge[4:]).decode()
    final, verifier = client_final(PASSWORD, first_bare, server_first)
    [v] = client.command(b64(final))
    assert base64.b64decode(v[4:]).decode() == verifier
    assert client.command("") == ["235 2.0.0 OK Authenticated"]
    # A wrong password fails at the proof with 535.
    other = tls_client(server)
    other.command("EHLO c.test")
    [challenge] = other.command(f"AUTH SCRAM-SHA-256 {b64('n,,' + first_bare)}")
    final, _ = client_final("bad", first_bare, base64.b64decode(challenge[4:]).decode())
    assert other.command(b64(final))[0].startswith("535 5.7.8")


def test_lockout_after_failures(server: PetrelServer) -> None:
    client = tls_client(server)
    client.command("EHLO c.test")
    bad = b64(f"\0{USER}\0nope")
    for _ in range(3):
        assert client.command(f"AUTH PLAIN {bad}")[0].startswith("535 5.7.8")
    assert client.command(f"AUTH PLAIN {bad}")[0].startswith("421 4.7.0")
    assert client.at_eof()
    again = RawClient(server.connect())
    assert again.reply()[0].startswith("421 4.7.0")
    assert "event=auth-lockout" in server.log_text()


def test_locked_out_client_on_submissions_gets_the_421_over_tls(server: PetrelServer) -> None:
    client = tls_client(server)
    client.command("EHLO c.test")
    bad = b64(f"\0{USER}\0nope")
    for _ in range(4):
        reply = client.command(f"AUTH PLAIN {bad}")
    assert reply == [LOCKED]
    # Implicit TLS: the handshake completes, then the 421 comes inside it (no reset).
    ctx = server.client_tls()
    implicit = RawClient(
        ctx.wrap_socket(server.connect(mode="submissions"), server_hostname=HOSTNAME)
    )
    assert implicit.reply() == [LOCKED]
    assert implicit.at_eof()
    assert "event=tls-failed" not in server.log_text()


def test_submission_requires_tls_then_auth(server: PetrelServer) -> None:
    plain = RawClient(server.connect(mode="submission"))
    plain.reply()
    assert "250-STARTTLS" in plain.command("EHLO c.test")
    assert plain.command("AUTH LOGIN")[0].startswith("538 5.7.11")
    assert plain.command(f"MAIL FROM:<{USER}>")[0] == "530 5.7.0 Authentication required"
    plain.close()
    with smtplib.SMTP(server.host, server.ports["submission"]) as client:
        client.starttls(context=server.client_tls())
        client.ehlo()
        code, text = client.mail(USER)
        assert (code, text) == (530, b"5.7.0 Authentication required")
        client.rset()
        client.login("willie", PASSWORD)
        assert client.mail("darth.vader@deathstar.com")[0] == 553
        client.rset()
        assert client.mail(f"sales@{HOSTNAME}")[0] == 250  # an alias that reaches willie
        assert client.rcpt("ann@localhost")[0] == 250
        assert client.rcpt("friend@remote.example")[0] == 250
        assert client.data(b"Subject: no date, no id\r\n\r\nbody\r\n")[0] == 250
    [message] = server.wait_for_messages("ann", domain="localhost")
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert parsed["Date"] and parsed["Message-ID"].endswith(f"@{HOSTNAME}>")
    assert parsed["Subject"] == "no date, no id"
    assert b"with ESMTPSA id" in message


def test_submissions_implicit_tls_with_smtplib(server: PetrelServer) -> None:
    ctx = server.client_tls()
    with smtplib.SMTP_SSL(server.host, server.ports["submissions"], context=ctx) as client:
        client.login(USER, PASSWORD)
        refused = client.sendmail(
            USER,
            ["bob@localhost"],
            b"Date: Thu, 27 Mar 2008 23:12:49 -0700\r\nMessage-ID: <own@client.test>\r\n"
            b"Subject: kept\r\n\r\nbody\r\n",
        )
        assert refused == {}
    [message] = server.wait_for_messages("bob", domain="localhost")
    assert message.count(b"Message-ID:") == 1 and b"<own@client.test>" in message
    assert message.count(b"Date:") == 1


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by system-deps")
@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_swaks_tls_auth(server: PetrelServer, mechanism: str) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"{server.host}:{server.ports['submission']}",
            "-tls",
            "--auth",
            mechanism,
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
            "--from",
            USER,
            "--to",
            f"swaks-{mechanism.lower()}@localhost",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.0.0 OK Authenticated" in result.stdout
    assert server.wait_for_messages(f"swaks-{mechanism.lower()}", domain="localhost")


def test_credentials_never_logged(server: PetrelServer) -> None:
    test_failures_bad_base64_cancel_unknown_mechanism(server)
    wait_until(lambda: "outcome=failure" in server.log_text(), what="failure log")
    assert PASSWORD not in server.log_text()
    assert b64(f"\0{USER}\0wrong") not in server.log_text()
    assert socket and ssl


def test_vrfy_expn_authenticated_policy(server: PetrelServer) -> None:
    """``policy.vrfy/expn = "authenticated"`` (the default): the answers follow AUTH."""
    (server.data_dir / "aliases").write_text("sales: willie\nteam: willie, ann@localhost\n")
    client = tls_client(server)
    client.command("EHLO c.test")
    assert client.command("VRFY willie") == [
        "252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery"
    ]
    assert client.command("VRFY nobody") == client.command("VRFY willie")
    assert client.command(f"EXPN team@{HOSTNAME}") == ["502 5.7.0 EXPN not allowed"]
    assert client.command(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}") == [
        "235 2.0.0 OK Authenticated"
    ]
    # The same session, now authenticated, gets the real answers.
    assert client.command("VRFY willie") == [f"250 2.1.5 <{USER}>"]
    assert client.command(f"VRFY <sales@{HOSTNAME}>") == [f"250 2.1.5 <sales@{HOSTNAME}>"]
    assert client.command("VRFY nobody") == [f"550 5.1.1 <nobody@{HOSTNAME}>... User unknown"]
    assert client.command("VRFY someone@remote.example")[0].startswith("252 2.5.2")
    assert client.command(f"EXPN team@{HOSTNAME}") == [
        f"250-2.1.5 <{USER}>",
        "250 2.1.5 <ann@localhost>",
    ]
    assert client.command("EXPN willie") == [f"250 2.1.5 <{USER}>"]
    assert client.command("EXPN nobody") == [f"550 5.1.1 <nobody@{HOSTNAME}>... User unknown"]
    client.close()
    # A new session starts unauthenticated again.
    other = tls_client(server)
    other.command("EHLO c.test")
    assert other.command("VRFY willie")[0].startswith("252 2.5.2")
    assert other.command("EXPN team")[0] == "502 5.7.0 EXPN not allowed"


def test_submission_rules_rfc6409(server: PetrelServer) -> None:
    """RFC 6409 on both submission ports: AUTH before MAIL, owned senders, added fields."""
    # 2587 in plaintext: AUTH is not even advertised, and MAIL needs AUTH.
    plain = RawClient(server.connect(mode="submission"))
    plain.reply()
    ehlo = plain.command("EHLO c.test")
    assert "250-STARTTLS" in ehlo and not any("AUTH" in line for line in ehlo)
    assert plain.command("MAIL FROM:<>") == ["530 5.7.0 Authentication required"]
    plain.close()
    # 2465 (implicit TLS): AUTH is offered at once, and is still required before MAIL.
    ctx = server.client_tls()
    implicit = RawClient(
        ctx.wrap_socket(server.connect(mode="submissions"), server_hostname=HOSTNAME)
    )
    implicit.reply()
    ehlo = implicit.command("EHLO c.test")
    assert "250-AUTH PLAIN LOGIN SCRAM-SHA-256" in ehlo and "250-STARTTLS" not in ehlo
    assert implicit.command(f"MAIL FROM:<{USER}>") == ["530 5.7.0 Authentication required"]
    assert implicit.command(f"AUTH PLAIN {b64(chr(0) + 'willie' + chr(0) + PASSWORD)}") == [
        "235 2.0.0 OK Authenticated"
    ]
    # Ownership: another local user's address is refused, the own one in any case is not.
    assert implicit.command(f"MAIL FROM:<ann@{HOSTNAME}>") == [
        f"553 5.7.1 <ann@{HOSTNAME}>: Sender address not owned by user {USER}"
    ]
    assert implicit.command(f"MAIL FROM:<WILLIE@{HOSTNAME.upper()}>")[0].startswith("250 2.1.0")
    assert implicit.command("RCPT TO:<carol@localhost>")[0].startswith("250 2.1.5")
    # BDAT (RFC 3030) gets the same header completion as DATA; a header-only message too.
    text = b"Subject: chunked, header only\r\n"
    implicit.send(b"BDAT %d LAST\r\n" % len(text) + text)
    assert implicit.reply()[0].startswith("250 2.0.0")
    implicit.command("QUIT")
    implicit.close()
    [message] = server.wait_for_messages("carol", domain="localhost")
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert parsed["Date"] and parsed["Message-ID"].endswith(f"@{HOSTNAME}>")
    assert parsed["Subject"] == "chunked, header only"


def test_mx_listener_adds_no_header_fields(server: PetrelServer) -> None:
    """Date:/Message-ID: are the MSA's job (RFC 6409 §8); the MX relays the text as sent."""
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("s@client.test", [f"{USER}"], b"Subject: as sent\r\n\r\nbody\r\n")
    [message] = server.wait_for_messages("willie")
    assert b"\nDate:" not in message and b"Message-ID:" not in message


# -- issue 14: the lock-out cannot be bypassed, SCRAM does not tell who exists -------------

LOCKED = "421 4.7.0 mx.petrel.test Too many failed authentications, try again later"


def test_lockout_applies_to_connections_opened_before_it(server: PetrelServer) -> None:
    early = tls_client(server)
    early.command("EHLO c.test")
    guesser = tls_client(server)
    guesser.command("EHLO c.test")
    bad = b64(f"\0{USER}\0nope")
    for _ in range(3):
        assert guesser.command(f"AUTH PLAIN {bad}")[0].startswith("535 5.7.8")
    assert guesser.command(f"AUTH PLAIN {bad}") == [LOCKED]
    # The connection from before the lock-out does not get to try the right password.
    assert early.command(f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}") == [LOCKED]
    assert early.at_eof()


def test_simultaneous_guesses_are_verified_at_most_max_failures_times(
    server: PetrelServer,
) -> None:
    clients = []
    for _ in range(20):
        client = tls_client(server)
        client.command("EHLO c.test")
        clients.append(client)
    right = 13
    lines = [
        f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + (PASSWORD if n == right else f'guess{n}'))}"
        for n in range(20)
    ]
    start = threading.Barrier(len(clients))

    def guess(n: int) -> str:
        start.wait(timeout=30)
        return clients[n].command(lines[n])[0]

    with ThreadPoolExecutor(len(clients)) as pool:
        replies = list(pool.map(guess, range(len(clients))))
    wrong = [reply for n, reply in enumerate(replies) if n != right]
    assert all(reply.startswith("535 5.7.8") or reply == LOCKED for reply in wrong), replies
    assert replies[right] in ("235 2.0.0 OK Authenticated", LOCKED)
    # max_failures = 4: at most four wrong guesses were checked, whatever the interleaving.
    assert sum(reply.startswith("535") for reply in replies) <= 4
    assert server.log_text().count("outcome=failure") <= 4


def _server_first(client: RawClient, name: str) -> dict[str, str]:
    [challenge] = client.command(f"AUTH SCRAM-SHA-256 {b64(f'n,,n={name},r=clientnonce1234')}")
    assert challenge.startswith("334 "), challenge
    message = base64.b64decode(challenge[4:]).decode()
    return dict(field.split("=", 1) for field in message.split(","))


def test_scram_decoy_salt_for_an_unknown_user_survives_a_restart(server: PetrelServer) -> None:
    client = tls_client(server)
    client.command("EHLO c.test")
    real = _server_first(client, USER)
    assert client.command("*")[0].startswith("501 5.5.2")
    before = _server_first(client, "nobody")
    client.close()
    server.stop()
    server.start()
    again = tls_client(server)
    again.command("EHLO c.test")
    after = _server_first(again, "nobody")
    assert after["s"] == before["s"]
    assert after["i"] == before["i"] == real["i"]
    assert len(base64.b64decode(after["s"])) == len(base64.b64decode(real["s"]))
    # A bare name and the full address are one user, real or not.
    assert again.command("*")[0].startswith("501 5.5.2")
    assert _server_first(again, f"nobody@{HOSTNAME}")["s"] == after["s"]
    mode = (server.data_dir / "scram-decoy.key").stat().st_mode
    assert mode & 0o777 == 0o600


def test_cancelled_exchanges_lead_to_the_lockout(server: PetrelServer) -> None:
    """Collecting salts (SCRAM, then ``*``) and cancelling LOGIN count as failures."""
    client = tls_client(server)
    client.command("EHLO c.test")
    for name in ("nobody", "somebody", USER):
        _server_first(client, name)
        assert client.command("*") == ["501 5.5.2 Authentication cancelled"]
    assert client.command("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert client.command("*") == [LOCKED]
    assert client.at_eof()
    assert RawClient(server.connect()).reply()[0].startswith("421 4.7.0")
