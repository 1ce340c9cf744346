"""Client SASL: the RFC 7677 §3 SCRAM-SHA-256 example, PLAIN, LOGIN, masking."""

from __future__ import annotations

import base64

import pytest

from petrel.client.sasl import (
    MASK,
    AuthError,
    LoginMechanism,
    PlainMechanism,
    ScramSha256,
    choose_mechanism,
)

SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)


def test_scram_sha_256_rfc7677_example() -> None:
    mech = ScramSha256("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert mech.initial_response() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = mech.respond(SERVER_FIRST)
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    mech.success(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_scram_rejects_a_forged_server_signature() -> None:
    mech = ScramSha256("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    mech.respond(SERVER_FIRST)
    with pytest.raises(AuthError):
        mech.success(b"v=" + base64.b64encode(b"x" * 32))


def test_scram_rejects_a_nonce_that_does_not_extend_ours() -> None:
    mech = ScramSha256("user", "pencil", nonce="abc")
    with pytest.raises(AuthError):
        mech.respond(b"r=zzz,s=QQ==,i=4096")


def test_scram_escapes_the_user_name() -> None:
    mech = ScramSha256("a=b,c", "x", nonce="N")
    assert mech.initial_response() == b"n,,n=a=3Db=2Cc,r=N"


def test_plain_and_its_masked_description() -> None:
    mech = PlainMechanism("willie", "funsmtp")
    assert mech.initial_response() == b"\0willie\0funsmtp"
    shown, decoded = mech.describe(mech.initial_response())
    assert "funsmtp" not in shown + decoded
    assert decoded == f"<NUL>willie<NUL>{MASK}"


def test_login_answers_username_then_password() -> None:
    mech = LoginMechanism("willie", "funsmtp")
    user = mech.respond(b"Username:")
    password = mech.respond(b"Password:")
    assert (user, password) == (b"willie", b"funsmtp")
    assert mech.describe(user) == ("d2lsbGll", "willie")
    assert mech.describe(password) == (MASK, MASK)


@pytest.mark.parametrize(
    ("wanted", "offered", "expected"),
    [
        ("auto", ["LOGIN", "PLAIN", "SCRAM-SHA-256"], "SCRAM-SHA-256"),
        ("auto", ["LOGIN", "PLAIN"], "PLAIN"),
        ("auto", ["LOGIN"], "LOGIN"),
        ("auto", ["CRAM-MD5"], None),
        ("login", ["PLAIN"], "LOGIN"),
        ("GSSAPI", ["GSSAPI"], None),
    ],
)
def test_choose_mechanism(wanted: str, offered: list[str], expected: str | None) -> None:
    assert choose_mechanism(wanted, offered) == expected


@pytest.mark.parametrize("iterations", ["100001", "4095", "1"])  # 2e9 (hangs old code): test_send
def test_scram_refuses_an_iteration_count_out_of_bounds(iterations: str) -> None:
    mech = ScramSha256("user", "pencil", nonce="abc")
    with pytest.raises(AuthError, match=f"asks for {iterations} iterations"):
        mech.respond(f"r=abcdef,s=QQ==,i={iterations}".encode())


def test_scram_accepts_the_bounds() -> None:
    for iterations in (4096, 100_000):
        ScramSha256("user", "pencil", nonce="abc").respond(f"r=abcd,s=QQ==,i={iterations}".encode())
