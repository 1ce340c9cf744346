"""SCRAM-SHA-256 in the sans-IO core against RFC 7677 §3, with an independent client."""

from __future__ import annotations

import base64
import hashlib
import hmac

from petrel import smtp
from petrel.policy.users import scram_secret
from petrel.smtp import _sasl

# RFC 7677 §3
CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def client_final(password: str, client_first_bare: str, server_first: str) -> tuple[str, str]:
    """A test-only SCRAM client written from RFC 5802 §3: (client-final, expected v=)."""
    fields = dict(f.split("=", 1) for f in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    return (
        f"{without_proof},p={base64.b64encode(proof).decode()}",
        f"v={base64.b64encode(server_signature).decode()}",
    )


def test_independent_client_reproduces_the_rfc_vector() -> None:
    final, verifier = client_final("pencil", CLIENT_FIRST[3:], SERVER_FIRST)
    assert (final, verifier) == (CLIENT_FINAL, SERVER_FINAL)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_core_runs_the_rfc_7677_exchange() -> None:
    mech = _sasl.ScramSha256(lambda: SERVER_NONCE)
    step = mech.step(CLIENT_FIRST.encode())
    assert step == _sasl.Lookup("", "user")
    secret = scram_secret("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    first = mech.server_first(secret.salt, 4096, secret.stored_key, secret.server_key)
    assert first.decode() == SERVER_FIRST
    assert mech.step(CLIENT_FINAL.encode()) == _sasl.Challenge(SERVER_FINAL.encode())
    assert mech.step(b"") == _sasl.Outcome("", "user", True)


def test_core_rejects_a_wrong_proof() -> None:
    mech = _sasl.ScramSha256(lambda: SERVER_NONCE)
    mech.step(CLIENT_FIRST.encode())
    secret = scram_secret("not pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    mech.server_first(secret.salt, 4096, secret.stored_key, secret.server_key)
    assert mech.step(CLIENT_FINAL.encode()) == _sasl.Outcome("", "user", False)


def _ready(auth: tuple[str, ...] = ("PLAIN", "LOGIN", "SCRAM-SHA-256")) -> smtp.ServerConnection:
    conn = smtp.ServerConnection("mx.test", extensions=smtp.Extensions(auth=auth))
    conn.send(smtp.reply(220, None, "hi"))
    conn.receive_data(b"EHLO c.test\r\n")
    conn.next_event()
    conn.send(smtp.reply(250, None, "hello"))
    return conn


def test_plain_with_and_without_initial_response_and_cancel() -> None:
    conn = _ready()
    conn.receive_data(f"AUTH PLAIN {b64(chr(0) + 'ann' + chr(0) + 'pw')}\r\n".encode())
    event = conn.next_event()
    assert isinstance(event, smtp.AuthCredentials)
    assert (event.authcid, event.password) == ("ann", "pw")
    assert "pw" not in repr(event)
    conn.send(smtp.reply(535, "5.7.8", "no"))
    conn.receive_data(b"AUTH PLAIN\r\n")
    event = conn.next_event()
    assert isinstance(event, smtp.AuthChallenge)
    assert conn.send(event.reply) == b"334 \r\n"
    conn.receive_data(b"*\r\n")
    event = conn.next_event()
    assert isinstance(event, smtp.BadCommand) and event.reply.code == 501
    conn.send(event.reply)
    assert conn.state is smtp.State.READY
    conn.receive_data(b"AUTH PLAIN =\r\n")
    event = conn.next_event()
    assert isinstance(event, smtp.BadCommand) and event.reply.code == 501


def test_auth_needs_tls_gets_538() -> None:
    conn = smtp.ServerConnection("mx.test", extensions=smtp.Extensions(auth_needs_tls=True))
    conn.send(smtp.reply(220, None, "hi"))
    conn.receive_data(b"EHLO c.test\r\nAUTH PLAIN\r\n")
    conn.send(smtp.reply(250, None, "hello")) if conn.next_event() else None
    event = conn.next_event()
    assert isinstance(event, smtp.BadCommand)
    assert event.reply.to_bytes().startswith(b"538 5.7.11")
