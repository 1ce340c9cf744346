"""Reverse DNS of clients: asynchronous, through the process's `petrel.dns.Resolver`.

The result feeds the EHLO reply ("(may be forged)" when the name does not resolve back
to the address, as Sendmail says) and the Received header. It never holds up the
greeting: the lookup starts at connect and only the EHLO reply waits, for at most two
lookups' ``[dns] timeout`` (the PTR, then the name's addresses). The resolver caches
answers for their TTL; here concurrent sessions of one client share the lookup in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress

from petrel.dns import Resolver

Result = tuple[str | None, bool]  # (name or None, forward-confirmed)


class ReverseDns:
    def __init__(self, dns: Resolver, *, enabled: bool):
        self._dns = dns
        self._enabled = enabled
        self._pending: dict[str, asyncio.Future[Result]] = {}

    def lookup(self, ip: str) -> asyncio.Future[Result]:
        """A future for ``ip``'s checked name; shared by concurrent sessions of one client."""
        pending = self._pending.get(ip)
        if pending is not None:
            return pending
        if not self._enabled:
            future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            future.set_result((None, False))
            return future
        future = asyncio.ensure_future(self._forward_confirmed(ip))
        self._pending[ip] = future
        future.add_done_callback(lambda _: self._pending.pop(ip, None))
        return future

    async def _forward_confirmed(self, ip: str) -> Result:
        """The first PTR name, and whether one of its addresses is ``ip`` (FCrDNS)."""
        names = await self._dns.ptr(ip)
        if not names.records:
            return None, False
        name = names.records[0]
        addresses = await self._dns.addresses(name)
        wanted = ipaddress.ip_address(ip)
        return name, any(ipaddress.ip_address(a) == wanted for a in addresses.records)
