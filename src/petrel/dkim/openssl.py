"""dkimpy's DKIM and ARC signers with the RSA step done by OpenSSL (``cryptography``).

dkimpy signs RSA in pure Python (two 1024-bit ``pow`` calls for a 2048-bit key, some
6 ms of CPU holding the GIL: the event loop stalls while a thread signs). dkimpy has no
hook for the private-key operation: ``DomainSigner.gen_header`` builds the field, hashes
the header fields and calls the module function ``RSASSA_PKCS1_v1_5_sign``. Rather than
replace that module global for the whole process, ``DKIM`` and ``ARC`` here override
``gen_header`` per instance: the same steps with dkimpy's own pieces (``fold``,
``hash_headers``, ``RE_BTAG``), only the signature made by OpenSSL with the key given to
the constructor (0.3-0.6 ms; cryptography 50 still holds the GIL while it signs, but
only that long). Everything else (canonicalization, the fields signed,
the tags and their order, the ARC chain) stays dkimpy's, and RSASSA-PKCS1-v1_5 is
deterministic, so a field is byte for byte what dkimpy would have made
(tests/test_dkim_openssl.py checks that). Checked against dkimpy 1.1.8, pinned in
pyproject.toml to ``<1.2``: a new dkimpy must be checked again before the pin moves.
Ed25519 (and anything but rsa-sha256) is left to dkimpy as it is.
"""

from __future__ import annotations

import base64
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

__all__ = ["ARC", "DKIM"]

_PKCS1 = padding.PKCS1v15()
_SHA256 = utils.Prehashed(hashes.SHA256())


class _OpenSslRsa:
    """The ``gen_header`` of dkimpy 1.1.8's DomainSigner, signing through OpenSSL."""

    # What dkim.DomainSigner sets; declared so the override type-checks.
    signature_algorithm: bytes
    headers: list[tuple[bytes, bytes]]
    hasher: Any
    debug_content: bool
    linesep: bytes
    signed_headers: list[tuple[bytes, bytes]]

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey | None, **options: Any) -> None:
        """``key``: the RSA key to sign with (the PEM given to ``sign`` must be the same
        key: dkimpy still reads it); None leaves the signing to dkimpy (Ed25519)."""
        super().__init__(message, **options)  # type: ignore[call-arg]
        self.openssl_key = key

    def gen_header(
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: tuple[bytes, ...],
        canon_policy: Any,
        header_name: bytes,
        pk: Any,
        standardize: bool = False,
    ) -> bytes:
        if self.openssl_key is None or self.signature_algorithm != b"rsa-sha256":
            return super().gen_header(  # type: ignore[misc, no-any-return]
                fields, include_headers, canon_policy, header_name, pk, standardize
            )
        # From here to the signature: dkimpy's gen_header as it is.
        if standardize:
            lower = [(x, y.lower().replace(b" ", b"")) for (x, y) in fields if x != b"bh"]
            reg = [(x, y.replace(b" ", b"")) for (x, y) in fields if x == b"bh"]
            fields = sorted(lower + reg, key=lambda x: x[0])
        header_value = b"; ".join(b"=".join(x) for x in fields)
        if not standardize:
            header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        header = (header_name, b" " + header_value)
        h = dkim.HashThrough(self.hasher(), self.debug_content)
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(
            h, canon_policy, headers, include_headers, header, dict(fields)
        )
        # The one change: OpenSSL signs the digest dkimpy computed.
        signature = self.openssl_key.sign(h.digest(), _PKCS1, _SHA256)
        index = next(i for i, (tag, _) in enumerate(fields) if tag == b"b")
        fields[index] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        if not standardize:
            header_value = dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep)
        return header_value


class DKIM(_OpenSslRsa, dkim.DKIM):  # type: ignore[misc]
    """``dkim.DKIM(message).sign(...)``, its RSA signature by OpenSSL."""


class ARC(_OpenSslRsa, dkim.ARC):  # type: ignore[misc]
    """``dkim.ARC(message).sign(...)`` (what ``dkim.arc_sign`` does), RSA by OpenSSL."""
