"""`Resolver`: dnspython's asynchronous stub resolver behind a small typed API.

The cache is dnspython's `LRUCache`: bounded, entries expire with the answer's TTL, and
NXDOMAIN/NODATA are cached for the SOA minimum (RFC 2308). Temporary failures are never
cached, so the next lookup asks again.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename

from petrel.config import DnsSection
from petrel.log import log_event

__all__ = ["LOOPBACK", "MX", "Lookup", "Resolver", "Status", "literal_addresses"]

log = logging.getLogger("petrel.dns")

T = TypeVar("T")

CACHE_SIZE = 10_000  # answers kept; the least recently used go first

LOOPBACK = ("127.0.0.1", "::1")  # what a localhost name is (RFC 6761 §6.3), IPv4 first


class Status(enum.Enum):
    """What a lookup found; ``NXDOMAIN`` and ``NODATA`` are definite, ``TEMPERROR`` is not."""

    OK = "ok"
    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, with no record of the type asked for
    TEMPERROR = "temperror"  # timeout, SERVFAIL, REFUSED, no nameserver answered


@dataclass(frozen=True, slots=True)
class Lookup(Generic[T]):
    """The answer to one question: ``records`` is empty unless ``status`` is OK."""

    status: Status
    records: tuple[T, ...] = ()
    error: str = ""  # why, for TEMPERROR (for logs and 4xx texts)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def temporary(self) -> bool:
        return self.status is Status.TEMPERROR


@dataclass(frozen=True, slots=True)
class MX:
    """One MX record; ``exchange`` is "" for the null MX "." (RFC 7505)."""

    preference: int
    exchange: str


def _host(name: dns.name.Name) -> str:
    """A name as Petrel compares names: lower case, no trailing dot ("" for the root)."""
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else ""


class Resolver:
    """One per process: nameservers and timeout from ``[dns]``, one shared cache."""

    def __init__(self, section: DnsSection) -> None:
        self._cache = dns.resolver.LRUCache(CACHE_SIZE)
        self._resolver = self._make(section)

    def _make(self, section: DnsSection) -> dns.asyncresolver.Resolver:
        if section.nameservers is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1"]
                log_event(
                    log,
                    "dns-no-resolv-conf",
                    level=logging.WARNING,
                    effect="asking 127.0.0.1; set [dns] nameservers",
                )
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in section.nameservers
            ]
        # ``[dns] timeout`` bounds the whole lookup; each try gets a share, so a silent
        # first server leaves time for the next, and a lone server is asked twice.
        resolver.lifetime = section.timeout
        resolver.timeout = section.timeout / max(2, len(resolver.nameservers))
        resolver.cache = self._cache
        return resolver

    def reconfigure(self, section: DnsSection) -> None:
        """``petrel reload``: new nameservers or timeout for the lookups from now on."""
        self._resolver = self._make(section)

    async def _query(
        self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType, pick: Callable[..., T]
    ) -> Lookup[T]:
        try:
            qname = name if isinstance(name, dns.name.Name) else dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError):
            return Lookup(Status.NXDOMAIN)  # cannot be a DNS name (too long, empty label)
        try:
            answer = await self._resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Lookup(Status.NXDOMAIN)
        except dns.resolver.NoAnswer:
            return Lookup(Status.NODATA)
        except dns.exception.Timeout:
            return Lookup(Status.TEMPERROR, error=f"timed out after {self._resolver.lifetime:g}s")
        except dns.resolver.NoNameservers as exc:
            return Lookup(Status.TEMPERROR, error=_no_nameservers(exc))
        except (dns.exception.DNSException, OSError) as exc:
            return Lookup(Status.TEMPERROR, error=str(exc) or type(exc).__name__)
        return Lookup(Status.OK, tuple(pick(rdata) for rdata in answer))

    async def txt(self, name: str) -> Lookup[str]:
        """TXT records, each one's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return await self._query(
            name,
            dns.rdatatype.TXT,
            lambda r: b"".join(r.strings).decode("utf-8", errors="replace"),
        )

    async def mx(self, name: str) -> Lookup[MX]:
        """MX records, lowest preference first."""
        found = await self._query(
            name, dns.rdatatype.MX, lambda r: MX(int(r.preference), _host(r.exchange))
        )
        if not found.ok:
            return found
        return Lookup(Status.OK, tuple(sorted(found.records, key=lambda m: m.preference)))

    async def a(self, name: str) -> Lookup[str]:
        return await self._query(name, dns.rdatatype.A, lambda r: str(r.address))

    async def aaaa(self, name: str) -> Lookup[str]:
        return await self._query(name, dns.rdatatype.AAAA, lambda r: str(r.address))

    async def addresses(self, name: str) -> Lookup[str]:
        """A and AAAA asked at once: IPv4 first, then IPv6.

        Any address is an answer; otherwise a temporary failure of either wins over a
        definite "none" (the address might exist), and NXDOMAIN over NODATA.
        """
        v4, v6 = await asyncio.gather(self.a(name), self.aaaa(name))
        if v4.ok or v6.ok:
            return Lookup(Status.OK, v4.records + v6.records)
        for lookup in (v4, v6):
            if lookup.temporary:
                return lookup
        return v4 if v4.status is Status.NXDOMAIN else v6

    async def host_addresses(self, host: str) -> Lookup[str]:
        """The addresses to connect to for a host named in the configuration.

        An IP address is itself and a localhost name is the loopback addresses, with no
        lookup (`literal_addresses`); any other name is asked here, as `addresses`. So
        no name Petrel connects to goes through the system resolver (getaddrinfo).
        """
        literal = literal_addresses(host)
        if literal is not None:
            return Lookup(Status.OK, literal)
        return await self.addresses(host)

    async def ptr(self, ip: str) -> Lookup[str]:
        """The names of ``ip`` (in-addr.arpa / ip6.arpa); an invalid address has none."""
        try:
            qname = dns.reversename.from_address(str(ipaddress.ip_address(ip)))
        except ValueError:
            return Lookup(Status.NXDOMAIN)
        return await self._query(qname, dns.rdatatype.PTR, lambda r: _host(r.target))


def literal_addresses(host: str) -> tuple[str, ...] | None:
    """The addresses of ``host`` known without asking DNS, else None.

    An IP address (IPv6 with or without brackets) is itself. "localhost" and the names
    under it are 127.0.0.1 then ::1: RFC 6761 §6.3 says resolvers answer them
    themselves, and it keeps ``smarthost = "localhost:25"`` working without DNS.
    """
    text = host.strip("[]")
    try:
        return (str(ipaddress.ip_address(text)),)
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return LOOPBACK
    return None


def _no_nameservers(exc: dns.resolver.NoNameservers) -> str:
    """dnspython's long text cut to what each server said (SERVFAIL, REFUSED, ...)."""
    errors = exc.kwargs.get("errors") or []
    said = []
    for server, _tcp, port, error, response in errors:
        what = (
            dns.rcode.to_text(response.rcode())
            if response is not None
            else (str(error) or type(error).__name__)
        )
        said.append(f"{server}:{port} {what}")
    return "no nameserver answered" + (f" ({'; '.join(said)})" if said else "")
