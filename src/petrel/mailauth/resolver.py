"""`ResolverLookups`: Petrel's one resolver (`petrel.dns.Resolver`) as the checks'
`Lookups`: its TEMPERROR becomes `DnsTempError`, NXDOMAIN and NODATA empty answers."""

from __future__ import annotations

from typing import TypeVar

from petrel.dns import Lookup, Resolver, Status

from .dns import Answer, DnsTempError

__all__ = ["ResolverLookups"]

T = TypeVar("T")


def _answer(lookup: Lookup[T]) -> Answer[T]:
    if lookup.temporary:
        raise DnsTempError(lookup.error or "temporary DNS failure")
    return Answer(lookup.records, lookup.status is Status.NXDOMAIN)


class ResolverLookups:
    """The `Lookups` of SPF, DKIM and DMARC, answered by the shared resolver and cache."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def txt(self, name: str) -> Answer[str]:
        return _answer(await self.resolver.txt(name))

    async def addresses(self, name: str, ipv6: bool) -> Answer[str]:
        return _answer(await (self.resolver.aaaa(name) if ipv6 else self.resolver.a(name)))

    async def mx(self, name: str) -> Answer[tuple[int, str]]:
        found = await self.resolver.mx(name)
        answer = _answer(found)
        return Answer(tuple((m.preference, m.exchange) for m in found.records), answer.nxdomain)

    async def ptr(self, ip: str) -> Answer[str]:
        return _answer(await self.resolver.ptr(ip))
