"""Reverse DNS of clients: asynchronous, bounded by a short timeout, cached briefly.

The result feeds the EHLO reply ("(may be forged)" when the name does not resolve back
to the address, as Sendmail says) and the Received header. It never holds up the
greeting: the lookup starts at connect and only the EHLO reply waits, at most
``timeout`` seconds. The system resolver is used (not raw DNS) so /etc/hosts counts.
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict

Result = tuple[str | None, bool]  # (name or None, forward-confirmed)

_CACHE_SIZE = 4096
_CACHE_SECONDS = 300.0


class ReverseDns:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, enabled: bool, timeout: float = 3.0):
        self._loop = loop
        self._enabled = enabled
        self._timeout = timeout
        self._cache: OrderedDict[str, tuple[float, asyncio.Future[Result]]] = OrderedDict()

    def lookup(self, ip: str) -> asyncio.Future[Result]:
        """A future for ``ip``'s checked name; shared by concurrent sessions of one client."""
        now = self._loop.time()
        hit = self._cache.get(ip)
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            self._cache.move_to_end(ip)
            return hit[1]
        if not self._enabled:
            future: asyncio.Future[Result] = self._loop.create_future()
            future.set_result((None, False))
            return future
        future = asyncio.ensure_future(self._resolve(ip))
        self._cache[ip] = (now, future)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return future

    async def _resolve(self, ip: str) -> Result:
        try:
            return await asyncio.wait_for(self._forward_confirmed(ip), self._timeout)
        except (TimeoutError, OSError, UnicodeError):
            return None, False

    async def _forward_confirmed(self, ip: str) -> Result:
        try:
            name, _ = await self._loop.getnameinfo((ip, 0), socket.NI_NAMEREQD)
        except (OSError, UnicodeError):
            return None, False
        try:
            infos = await self._loop.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return name, False
        addresses = {info[4][0] for info in infos}
        return name, ip in addresses
