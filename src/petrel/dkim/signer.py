"""`Signer`: DKIM-Signature fields (RFC 6376, RFC 8463) for mail whose From: is ours.

Intake asks it at commit, in a thread (the body hash and the RSA operation are CPU
work): every ``[[dkim.sign]]`` key whose domain is the From: domain or a parent of it
signs, each on its own (RSA and Ed25519 side by side: a verifier that knows only RSA
still finds a signature it can check). Canonicalization is relaxed/relaxed; the fields
signed are dkimpy's default list (From, To, Cc, Subject, Date, Message-ID, MIME and
List fields, ... as present), with From signed once more than it occurs, so no From
can be added later without breaking the signature. dkimpy makes the fields; the RSA
signature in them is OpenSSL's (`openssl.DKIM`: dkimpy's own RSA is pure Python).
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Sequence

from petrel.config import ConfigError, DkimSection
from petrel.log import log_event

from .keys import KeyFileError, SigningKey, load
from .openssl import DKIM

__all__ = ["Signer"]

log = logging.getLogger("petrel.dkim")

_DKIMPY_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


class Signer:
    """The keys of ``[[dkim.sign]]``, read once per configuration."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self.keys = tuple(keys)

    @classmethod
    def load(cls, section: DkimSection) -> Signer:
        """Read every key; ConfigError names the first entry whose key cannot be used."""
        keys = []
        for index, entry in enumerate(section.sign):
            try:
                keys.append(load(entry))
            except KeyFileError as exc:
                raise ConfigError(f"dkim.sign[{index}].key: {entry.key}: {exc}") from None
        return cls(keys)

    def keys_for(self, from_values: Sequence[str]) -> list[SigningKey]:
        """The keys for a message whose From: fields say this: a From: domain at or
        below the key's domain. No From:, or one without an address, gets none."""
        domains = {
            address.rpartition("@")[2].lower().rstrip(".")
            for _, address in email.utils.getaddresses(list(from_values))
            if "@" in address
        }
        return [
            key
            for key in self.keys
            if any(d == key.domain or d.endswith("." + key.domain) for d in domains)
        ]

    @staticmethod
    def sign(message: bytes, keys: Sequence[SigningKey]) -> bytes:
        """The DKIM-Signature fields for ``message`` (CRLF lines), one per key, to go in
        front of it. A key that fails is logged and skipped: the mail still goes."""
        signatures = b""
        for key in keys:
            try:
                field = DKIM(message, key.openssl).sign(
                    key.selector.encode(),
                    key.domain.encode(),
                    key.private,
                    signature_algorithm=_DKIMPY_ALGORITHMS[key.algorithm],
                    canonicalize=(b"relaxed", b"relaxed"),
                )
            except Exception as exc:  # dkimpy's or PyNaCl's: never a reason to lose mail
                log_event(
                    log,
                    "dkim-sign-failed",
                    level=logging.ERROR,
                    domain=key.domain,
                    selector=key.selector,
                    error=str(exc),
                )
                continue
            signatures += field if field.endswith(b"\r\n") else field + b"\r\n"
        return signatures
