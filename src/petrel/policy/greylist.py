"""Greylisting (postgrey's rules): a new triplet is told to come back later.

The triplet is (client network, envelope sender, recipient), the network being the
client's IPv4 /24 or IPv6 /64 (a sending farm retries from a neighbour address). Its
first RCPT gets ``450 4.7.1``, and so does every retry until ``greylist_delay`` has
passed since that first one; the first retry after it passes. A triplet not retried
within ``RETRY_WINDOW`` (two days, postgrey's default) is forgotten. Once a triplet has
passed, the client's network is **auto-whitelisted** for ``WHITELIST_PERIOD`` (36 days,
about postgrey's ``--max-age`` of 35), renewed at most once a day while it keeps
sending, so a real mail server is delayed once and not again.

State lives in ``<data_dir>/greylist``, a `ThrottleTable` of its own: mapped by every
worker process, kept over restarts, fixed in size (``GREYLIST_SLOTS``). A slot's fields
mean here: ``locked_until`` is when the entry expires, ``base`` when the triplet was
first seen (or the network whitelisted), in whole seconds rounded *up* (a triplet never
passes early), and ``counts[0]`` is 1 for a triplet that passed. Expired entries are
the first to be reused, then the oldest; nothing needs sweeping. Keys are keyed hashes,
so no sender or recipient is stored in clear.

The policy takes a clock, so tests drive the rules without waiting.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from petrel.smtp import Reply, reply

from .throttle import ThrottleTable

__all__ = ["GREYLIST_SLOTS", "RETRY_WINDOW", "WHITELIST_PERIOD", "Greylist", "network"]

DAY = 86400.0
RETRY_WINDOW = 2 * DAY
WHITELIST_PERIOD = 36 * DAY
# 4 MiB: triplets and whitelisted networks together.
GREYLIST_SLOTS = 65536


def network(ip: str) -> str:
    """The client's network as greylisting sees it: IPv4 /24, IPv6 /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network((address, prefix), strict=False))


class Greylist:
    """The triplet rules over a ``ThrottleTable``; `check` is asked at each RCPT."""

    def __init__(
        self, table: ThrottleTable, delay: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.table = table
        self.delay = delay
        self.clock = clock

    def check(self, ip: str, sender: str, recipient: str) -> Reply | None:
        """None to let the recipient through; else the 450 to answer (and record)."""
        now = self.clock()
        net = network(ip)
        table = self.table
        client_key = table.hash(f"net:{net}")
        triplet_key = table.hash(f"grey:{net}\0{sender.lower()}\0{recipient.lower()}")
        with table.locked():
            with table.slot(client_key, now) as slot:
                if slot.locked_until > now:  # whitelisted
                    if slot.locked_until - now < WHITELIST_PERIOD - DAY:
                        slot.locked_until = now + WHITELIST_PERIOD
                        slot.base = math.ceil(now)
                    return None
            with table.slot(triplet_key, now) as slot:
                if slot.locked_until <= now:  # new, or forgotten: first seen now
                    slot.locked_until = now + RETRY_WINDOW
                    slot.base = math.ceil(now)
                    slot.counts[0] = 0
                    return self._refusal(self.delay)
                waited = now - slot.base
                if waited < self.delay and not slot.counts[0]:
                    return self._refusal(self.delay - waited)
                slot.counts[0] = 1
                slot.locked_until = now + WHITELIST_PERIOD
            with table.slot(client_key, now) as slot:
                slot.locked_until = now + WHITELIST_PERIOD
                slot.base = math.ceil(now)
        return None

    @staticmethod
    def _refusal(left: float) -> Reply:
        return reply(
            450,
            "4.7.1",
            f"Recipient address rejected: Greylisted, try again in {math.ceil(left)} seconds",
        )
