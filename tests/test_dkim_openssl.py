"""The RSA step through OpenSSL (petrel/dkim/openssl.py) changes no octet of a field.

RSASSA-PKCS1-v1_5 is deterministic, so at the same t= the DKIM-Signature that `Signer`
makes and the ARC set that `seal_arc` makes must be exactly what dkimpy's own
(pure-Python) signing makes; dkimpy's verifier must accept them. The independent
verifiers (Mail::DKIM, mailauth) check the fields of a running server in test_dkim.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dkim
import pytest

from petrel.config import DkimSign
from petrel.dkim import Signer, SigningKey
from petrel.dkim.keys import generate, load
from petrel.mailauth.dkimcheck import seal_arc

NOW = 1_764_608_400
MESSAGE = (
    b"Authentication-Results: mx.petrel.test; spf=pass smtp.mailfrom=alice@example.test;\r\n"
    b" dkim=none; arc=none\r\n"
    b"From: Alice <alice@example.test>\r\nTo: <bob@elsewhere.test>\r\n"
    b"Subject: a message to sign\r\nDate: Tue, 1 Dec 2026 17:00:00 +0000\r\n"
    b"Message-ID: <openssl@example.test>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Some text,  with  spaces \t\r\nand a second line.\r\n\r\n\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, SigningKey]:
    directory: Path = tmp_path_factory.mktemp("keys")
    loaded = []
    for selector, algorithm in (("s1", "rsa"), ("e1", "ed25519")):
        path = directory / f"{selector}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, generate(algorithm))
        os.close(fd)
        loaded.append(load(DkimSign("example.test", selector, path)))
    return loaded[0], loaded[1]


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both signers read t= from time.time(): the same second for both."""
    monkeypatch.setattr(time, "time", lambda: float(NOW))


def _records(keys: tuple[SigningKey, ...]) -> dict[bytes, bytes]:
    return {
        f"{k.selector}._domainkey.{k.domain}.".encode(): f"v=DKIM1; k={k.algorithm}; "
        f"p={k.public}".encode()
        for k in keys
    }


@pytest.mark.usefixtures("frozen_clock")
def test_signer_fields_are_dkimpys_octet_for_octet(keys: tuple[SigningKey, SigningKey]) -> None:
    rsa_key, ed_key = keys
    assert rsa_key.openssl is not None and ed_key.openssl is None
    fields = Signer.sign(MESSAGE, keys)
    expected = b"".join(
        dkim.DKIM(MESSAGE).sign(
            k.selector.encode(),
            k.domain.encode(),
            k.private,
            signature_algorithm={"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}[k.algorithm],
            canonicalize=(b"relaxed", b"relaxed"),
        )
        for k in keys
    )
    assert fields == expected
    assert b"a=rsa-sha256;" in fields and f"t={NOW};".encode() in fields
    signed = fields + MESSAGE
    records = _records(keys)
    for index in range(2):
        assert dkim.DKIM(signed).verify(idx=index, dnsfunc=lambda name, timeout=5: records[name])


@pytest.mark.usefixtures("frozen_clock")
def test_arc_set_is_dkimpys_octet_for_octet_and_verifies(
    keys: tuple[SigningKey, SigningKey],
) -> None:
    rsa_key = keys[0]
    sealed = seal_arc(MESSAGE, rsa_key, "mx.petrel.test")
    expected = b"".join(
        f if f.endswith(b"\r\n") else f + b"\r\n"
        for f in dkim.arc_sign(MESSAGE, b"s1", b"example.test", rsa_key.private, b"mx.petrel.test")
    )
    assert sealed == expected
    assert sealed.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256;")
    records = _records(keys)
    status, _, reason = dkim.arc_verify(
        sealed + MESSAGE, dnsfunc=lambda name, timeout=5: records[name]
    )
    assert status == dkim.CV_Pass, reason


def test_a_changed_message_no_longer_verifies(keys: tuple[SigningKey, SigningKey]) -> None:
    """The OpenSSL signature covers what dkimpy hashed: one octet changed fails it."""
    rsa_key = keys[0]
    changed = Signer.sign(MESSAGE, [rsa_key]) + MESSAGE.replace(b"Subject: a", b"Subject: A")
    records = _records(keys)
    assert not dkim.DKIM(changed).verify(dnsfunc=lambda name, timeout=5: records[name])
