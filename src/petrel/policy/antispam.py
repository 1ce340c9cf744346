"""postscreen's checks at connect, and Postfix's HELO and sender checks (``[antispam]``).

What the session asks, for a client that is neither exempt (``limits.exempt_networks``,
``domains.relay_networks``) nor authenticated, on ``smtp`` listeners only (submission
clients are people on dynamic addresses that DNSBLs list):

- `screen` at connect: the DNSBL/DNSWL score (postscreen's ``postscreen_dnsbl_sites``),
  every zone asked at once through the one resolver (its TTL cache answers repeats), at
  most ``DNSBL_WAIT`` seconds in all. A score at or over ``dnsbl_threshold`` is refused
  with ``554 5.7.1 Service unavailable; client [ip] blocked using <zone>`` and the
  list's TXT text; a lookup that fails or times out scores nothing: DNS trouble never
  blocks mail.
- `pregreet`: the reply to a client that talked before the 220 (while ``greet_delay``
  runs), postscreen's ``postscreen_greet_action = drop``: ``521 5.5.1 Protocol error``.
- `check_helo` at MAIL: ``504 5.5.2`` for a HELO/EHLO name that is no FQDN
  (``reject_non_fqdn_helo``, Postfix's ``reject_non_fqdn_helo_hostname``).
- `check_sender` at MAIL: a sender domain with no MX and no A/AAAA gets ``550 5.1.8``
  (``450 4.1.8`` when DNS cannot tell now), a null MX ``550 5.7.27``
  (``reject_unknown_sender_domain``, as Postfix's).

Greylisting is `petrel.policy.greylist`. Each refusal is counted in `Refusals` under its
reason; the session writes the one log line, with the same ``reason=``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass

from petrel.config import AntispamSection, DnsblSite
from petrel.dns import Lookup, Resolver, Status
from petrel.smtp import Reply, reply

__all__ = ["DNSBL_WAIT", "Antispam", "Listed", "query_name"]

# The longest the 220 waits for the lists (when greet_delay is shorter): postscreen
# waits for its DNSBL replies during its greet_wait, 6 s by default.
DNSBL_WAIT = 3.0
PREGREET = reply(521, "5.5.1", "Protocol error")
# What a list's TXT text may put into our reply: printable ASCII, bounded.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
_TXT_MAX = 200


@dataclass(frozen=True, slots=True)
class Listed:
    """A client refused at connect: the reply, and the zone and score for the log."""

    reply: Reply
    zone: str
    score: int


def query_name(ip: str, zone: str) -> str | None:
    """The DNSBL name of ``ip`` in ``zone``: reversed octets (IPv4), nibbles (IPv6)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            return ".".join(reversed(address.exploded.replace(":", ""))) + "." + zone
    return ".".join(reversed(str(address).split("."))) + "." + zone


class Antispam:
    """The ``[antispam]`` checks other than greylisting, over the process's resolver."""

    def __init__(self, section: AntispamSection, resolver: Resolver) -> None:
        self.section = section
        self.resolver = resolver
        self.greet_delay = section.greet_delay
        self.pregreet = section.pregreet == "reject" and section.greet_delay > 0
        self.helo_check = section.reject_non_fqdn_helo
        self.sender_check = section.reject_unknown_sender_domain
        self._zones = tuple(dict.fromkeys(site.zone for site in section.dnsbl))
        self.dnsbl = bool(self._zones)
        # Does a new client wait for anything before its 220 (greet_delay, the lists)?
        self.screens = self.dnsbl or self.greet_delay > 0

    async def screen(self, ip: str) -> Listed | None:
        """The DNSBL score of ``ip``: None to greet it, else its refusal."""
        try:
            async with asyncio.timeout(DNSBL_WAIT):
                return await self._score(ip)
        except TimeoutError:
            return None  # the lists did not answer in time: DNS trouble never blocks

    async def _score(self, ip: str) -> Listed | None:
        names = {zone: query_name(ip, zone) for zone in self._zones}
        asked = [zone for zone, name in names.items() if name is not None]
        answers = await asyncio.gather(*(self.resolver.a(names[z] or "") for z in asked))
        found: dict[str, Lookup[str]] = dict(zip(asked, answers, strict=True))
        score = 0
        hits: list[DnsblSite] = []
        for site in self.section.dnsbl:
            lookup = found.get(site.zone)
            if lookup is not None and any(site.matches(a) for a in lookup.records):
                score += site.weight  # records: empty unless the lookup found some
                hits.append(site)
        if score < self.section.dnsbl_threshold:
            return None
        zone = max(hits, key=lambda site: site.weight).zone
        text = f"Service unavailable; client [{ip}] blocked using {zone}"
        txt = await self.resolver.txt(names[zone] or "")
        if txt.status is Status.OK and txt.records:
            clean = _UNPRINTABLE.sub(" ", txt.records[0]).strip()[:_TXT_MAX]
            if clean:
                text += f"; {clean}"
        return Listed(reply(554, "5.7.1", text), zone, score)

    def check_helo(self, helo: str) -> Reply | None:
        """``reject_non_fqdn_helo``: a name without a dot (an address literal is fine)."""
        if not self.helo_check or helo.startswith("["):
            return None
        name = helo.rstrip(".")
        if "." in name and not name.startswith(".") and ".." not in name:
            return None
        return reply(
            504, "5.5.2", f"<{helo}>: Helo command rejected: need fully-qualified hostname"
        )

    async def check_sender(self, sender: str) -> Reply | None:
        """``reject_unknown_sender_domain``: the sender's domain must take mail back."""
        domain = sender.rpartition("@")[2].lower()
        if not self.sender_check or not sender or not domain or domain.startswith("["):
            return None
        mx = await self.resolver.mx(domain)
        if mx.ok:
            if all(record.exchange == "" for record in mx.records):  # RFC 7505 null MX
                return reply(
                    550,
                    "5.7.27",
                    f"<{sender}>: Sender address rejected: "
                    f"Domain {domain} does not accept mail (nullMX)",
                )
            return None
        found = mx if mx.status is not Status.NODATA else await self.resolver.addresses(domain)
        if found.ok:
            return None
        if found.temporary:
            return reply(450, "4.1.8", f"<{sender}>: Sender address rejected: Domain not found")
        return reply(550, "5.1.8", f"<{sender}>: Sender address rejected: Domain not found")
