"""What the inbound checks cost per message, alone: ``python bench/checks_cost.py``.

`Checker` (SPF for MAIL FROM and HELO, DKIM and ARC with dkimpy, DMARC, the
Authentication-Results field) on one event loop, its lookups answered from memory (what
the resolver's cache gives for every message after the first): CPU milliseconds per
message, unsigned and DKIM-signed (RSA-2048), by size. `make bench` measures the same
end to end against a Knot DNS server (the "petrel checks" target).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from petrel.mailauth.checks import Checker
from petrel.mailauth.dns import Answer

ROUNDS = int(os.environ.get("ROUNDS", "200"))
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC = base64.b64encode(
    KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
TXT = {
    "example.org": "v=spf1 ip4:192.0.2.1 -all",
    "client.example.org": "v=spf1 ip4:192.0.2.1 -all",
    "_dmarc.example.org": "v=DMARC1; p=reject",
    "s1._domainkey.example.org": f"v=DKIM1; k=rsa; p={PUBLIC}",
}


class MemoryLookups:
    """Every answer at once, as from a warm cache."""

    async def txt(self, name: str) -> Answer[str]:
        return Answer((TXT[name],)) if name in TXT else Answer(nxdomain=True)

    async def addresses(self, name: str, ipv6: bool) -> Answer[str]:
        return Answer(nxdomain=True)

    async def mx(self, name: str) -> Answer[tuple[int, str]]:
        return Answer(nxdomain=True)

    async def ptr(self, ip: str) -> Answer[str]:
        return Answer(nxdomain=True)


def message(size: int, signed: bool) -> bytes:
    head = (
        b"From: News <news@example.org>\r\nTo: <bob@example.test>\r\nSubject: checks\r\n"
        b"Date: Tue, 1 Dec 2026 17:00:00 +0000\r\nMessage-ID: <b@example.org>\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, again and again.  \r\n"
    text = head + line * max(1, (size - len(head)) // len(line))
    if not signed:
        return text
    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return dkim.sign(text, b"s1", b"example.org", pem) + text


async def cost(text: bytes, rounds: int) -> float:
    """CPU ms per message for SPF (begun as at MAIL) and `Checker.check`."""
    checker = Checker(MemoryLookups())
    try:
        start = time.process_time()
        for _ in range(rounds):
            spf = checker.start_spf("192.0.2.1", "bounce@example.org", "client.example.org", "mx")
            findings = await checker.check(spf, "bounce@example.org", text, "mx.example.test")
            assert b"dmarc=pass" in findings.field, findings.field
        return (time.process_time() - start) * 1000 / rounds
    finally:
        checker.close()


def main() -> None:
    print("| message | unsigned | DKIM-signed (RSA-2048) |")
    print("|---|---|---|")
    for size in (3 * 1024, 100 * 1024, 1 << 20):
        rounds = max(5, ROUNDS * 3 * 1024 // size)
        plain = asyncio.run(cost(message(size, False), rounds))
        signed = asyncio.run(cost(message(size, True), rounds))
        print(f"| {size // 1024} KB | {plain:.2f} ms | {signed:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
