"""DKIM keys: made by `petrel dkim keygen`, read for `[[dkim.sign]]`, published in DNS.

A key file is PEM: RSA as PKCS#1 (``BEGIN RSA PRIVATE KEY``, what opendkim-genkey
writes), Ed25519 as PKCS#8 (``BEGIN PRIVATE KEY``, what ``openssl genpkey`` writes);
either form is read. The DNS record is ``v=DKIM1; k=rsa|ed25519; p=<base64>``: for RSA
the SubjectPublicKeyInfo (RFC 6376 §3.6.1), for Ed25519 the raw 32-octet key (RFC 8463).
"""

from __future__ import annotations

import base64
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from petrel.config import DkimSign

__all__ = [
    "ALGORITHMS",
    "KeyFileError",
    "SigningKey",
    "generate",
    "key_path",
    "load",
    "public_of",
    "published_key",
    "record_line",
    "txt_record",
]

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048


class KeyFileError(ValueError):
    """A key file that cannot be used; the message says why, without the path."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One ``[[dkim.sign]]`` entry with its key read: what the signer needs."""

    domain: str
    selector: str
    algorithm: str  # rsa | ed25519
    private: bytes  # as dkimpy takes it: PKCS#1 PEM (RSA), base64 of the seed (Ed25519)
    public: str  # the p= value of the DNS record
    openssl: rsa.RSAPrivateKey | None = None  # the RSA key for OpenSSL to sign with


def key_path(data_dir: Path, domain: str, selector: str) -> Path:
    """``<data_dir>/dkim/<domain>.<selector>.key``, where keygen writes."""
    return data_dir / "dkim" / f"{domain}.{selector}.key"


def generate(algorithm: str) -> bytes:
    """A new private key as PEM text."""
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _parse(pem: bytes) -> tuple[str, bytes, str, rsa.RSAPrivateKey | None]:
    """(algorithm, the private key as dkimpy takes it, p=, the RSA key) from PEM text."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        reason = "encrypted" if isinstance(exc, TypeError) else "not a PEM private key"
        raise KeyFileError(f"{reason} (make one with `petrel dkim keygen`)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:  # RFC 8301 §3.2: verifiers must refuse these
            raise KeyFileError(f"an RSA key of {key.key_size} bits is too short (1024 at least)")
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "rsa", private, base64.b64encode(public).decode(), key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return "ed25519", base64.b64encode(seed), base64.b64encode(public).decode(), None
    raise KeyFileError("neither an RSA nor an Ed25519 key")


def load(entry: DkimSign) -> SigningKey:
    """Read ``entry.key``; KeyFileError says what is wrong with it."""
    try:
        fd = os.open(entry.key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError("is a symbolic link; name the file itself") from None
        raise KeyFileError(f"cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if os.fstat(file.fileno()).st_mode & 0o077:
            raise KeyFileError("others may read it: chmod 600 it")
        pem = file.read(1 << 16)
    algorithm, private, public, openssl = _parse(pem)
    return SigningKey(entry.domain, entry.selector, algorithm, private, public, openssl)


def public_of(pem: bytes) -> tuple[str, str]:
    """(algorithm, p=) of a PEM private key (keygen's output)."""
    algorithm, _, public, _ = _parse(pem)
    return algorithm, public


def txt_record(algorithm: str, public: str) -> str:
    return f"v=DKIM1; k={algorithm}; p={public}"


def record_line(domain: str, selector: str, algorithm: str, public: str) -> str:
    """The zone-file line to publish, split in 255-octet strings where it must be."""
    text = txt_record(algorithm, public)
    parts = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
    return f"{selector}._domainkey.{domain}. IN TXT {parts}"


_TAG_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*([^;]*)")


def published_key(record: str) -> tuple[str, str] | None:
    """(k=, p=) of a DKIM key record (RFC 6376 §3.6.1: k defaults to rsa), or None when
    it is no DKIM1 record. Whitespace inside p= is dropped, as verifiers do."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        match = _TAG_RE.fullmatch(part) if part.strip() else None
        if match is None:
            if part.strip():
                return None
            continue
        tags[match[1]] = match[2].strip()
    if tags.get("v", "DKIM1") != "DKIM1" or "p" not in tags:
        return None
    return tags.get("k", "rsa"), re.sub(r"\s+", "", tags["p"])
