"""What the mail checks need from DNS: typed answers and one temporary-error exception.

SPF (RFC 7208 §4.6.4) tells "no such name" and "no records" (void lookups, both) from
"the lookup failed" (temperror), and so do DKIM and DMARC. `Lookups` is that small
interface; Petrel's resolver (`[dns]`) implements it, and the RFC 7208 test suite's
zone data does in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["Answer", "DnsTempError", "Lookups"]

T = TypeVar("T")


class DnsTempError(Exception):
    """A lookup timed out or the server failed (SERVFAIL, REFUSED): try again later."""


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """The records found (empty for NODATA), and whether the name does not exist."""

    records: tuple[T, ...] = ()
    nxdomain: bool = False

    @property
    def void(self) -> bool:
        """No records at all: NXDOMAIN or NODATA (RFC 7208 §4.6.4's void lookup)."""
        return not self.records


class Lookups(Protocol):
    """The lookups SPF, DKIM and DMARC make. Each raises DnsTempError on failure."""

    async def txt(self, name: str) -> Answer[str]:
        """TXT records, each one's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        ...

    async def addresses(self, name: str, ipv6: bool) -> Answer[str]:
        """A (or with ``ipv6`` AAAA) records as address texts."""
        ...

    async def mx(self, name: str) -> Answer[tuple[int, str]]:
        """(preference, exchange) pairs, exchange without its trailing dot."""
        ...

    async def ptr(self, ip: str) -> Answer[str]:
        """The names of an address (in-addr.arpa / ip6.arpa), without trailing dots."""
        ...
