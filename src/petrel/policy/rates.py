"""Per-client and per-user rates (Postfix's anvil): connections, messages, recipients.

Each client (IPv4 address, IPv6 /64: `client_key`) gets ``limits.connection_rate``
connections, ``message_rate`` messages and ``recipient_rate`` recipients per minute; each
authenticated user ``user_message_rate`` messages per hour, whatever address it comes
from, so a stolen password cannot blast the world. Past a limit the client is answered as
Postfix answers it: ``421 4.7.0`` at connect, ``450 4.7.1`` at MAIL and RCPT (a temporary
refusal: a legitimate sender retries later), with a ``rate-limit`` log line naming the
client or the user.

What counts: a connection when it is admitted, a message at MAIL (as Postfix counts it:
a transaction, whether or not its text follows), a recipient at RCPT before any other
check (unknown recipients too: directory harvesting is what this rate slows). A refused
attempt is not counted, so the rate bounds what gets through and a client that waits
for its window to drain gets in again.

The counts live in a ``ThrottleTable`` of their own (``<data_dir>/rates``) shared by all
worker processes, in sixteen buckets per window (a count lasts between 15/16 of the
window and all of it). Each kind of count has its own keyed hash (``conn:``, ``mail:``,
``rcpt:`` and ``user:`` prefixes), and each check is one lockf round trip. The callers
skip the per-client checks for exempt clients (`Server.exempt`); the per-user rate
applies to everyone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from petrel.config import LimitsSection
from petrel.log import log_event
from petrel.smtp import Reply, reply

from .refusals import Reason, Refusals
from .throttle import BUCKETS, ThrottleTable, advance, client_key, count

__all__ = ["MINUTE", "RATES_SLOTS", "Rates"]

log = logging.getLogger("petrel.policy")

_REASONS: dict[str, Reason] = {
    "connection": "connection-rate",
    "message": "message-rate",
    "recipient": "recipient-rate",
    "user-message": "user-message-rate",
}
MINUTE = 60.0
HOUR = 3600.0
# 4 MiB: keys of four kinds (three per client, one per user) for some 16k clients at once.
RATES_SLOTS = 65536


class Rates:
    """The rate rules over a ``ThrottleTable``: each check counts what it lets through."""

    def __init__(
        self,
        table: ThrottleTable,
        limits: LimitsSection,
        hostname: str,
        refusals: Refusals,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.refusals = refusals
        self.hostname = hostname
        self.connection_rate = limits.connection_rate
        self.message_rate = limits.message_rate
        self.recipient_rate = limits.recipient_rate
        self.user_message_rate = limits.user_message_rate
        self.clock = clock

    def connection(self, ip: str, session: str = "") -> Reply | None:
        """A new connection from a non-exempt client: None to admit it (and count it)."""
        if not self.connection_rate:
            return None
        if self._take(f"conn:{client_key(ip)}", self.connection_rate, MINUTE):
            return None
        self._log("connection", session, self.connection_rate, client=ip)
        return reply(421, "4.7.0", f"{self.hostname} Error: too many connections from {ip}")

    def message(self, ip: str | None, user: str | None, session: str = "") -> Reply | None:
        """MAIL: ``ip`` None for an exempt client, ``user`` None when not authenticated.

        Both rates are checked and counted under one lock; a message refused by either
        is counted by neither.
        """
        checks: list[tuple[str, int, float]] = []
        if ip is not None and self.message_rate:
            checks.append((f"mail:{client_key(ip)}", self.message_rate, MINUTE))
        if user is not None and self.user_message_rate:
            checks.append((f"user:{user.lower()}", self.user_message_rate, HOUR))
        if not checks:
            return None
        over = self._take_all(checks)
        if over is None:
            return None
        if over == 0 and ip is not None:
            self._log("message", session, self.message_rate, client=ip, user=user)
            return reply(450, "4.7.1", f"Error: too much mail from {ip}")
        self._log("user-message", session, self.user_message_rate, client=ip, user=user)
        return reply(450, "4.7.1", f"Error: too much mail from {user}, try again later")

    def recipient(self, ip: str, session: str = "") -> Reply | None:
        """RCPT from a non-exempt client: None to go on to the recipient's checks."""
        if not self.recipient_rate:
            return None
        if self._take(f"rcpt:{client_key(ip)}", self.recipient_rate, MINUTE):
            return None
        self._log("recipient", session, self.recipient_rate, client=ip)
        return reply(450, "4.7.1", f"Error: too many recipients from {ip}")

    # -- the table -----------------------------------------------------------------------

    def _take(self, name: str, limit: int, window: float) -> bool:
        return self._take_all([(name, limit, window)]) is None

    def _take_all(self, checks: list[tuple[str, int, float]]) -> int | None:
        """Count one for every check if all are under their limits; else the index of
        the first that is not (nothing counted)."""
        now = self.clock()
        table = self.table
        keys = [
            (table.hash(name), limit, int(now // (window / BUCKETS)))
            for name, limit, window in checks
        ]
        with table.locked():
            for index, (key, limit, bucket) in enumerate(keys):
                with table.slot(key, now) as slot:
                    advance(slot, bucket)
                    if sum(slot.counts) >= limit:
                        return index
            for key, _, bucket in keys:
                with table.slot(key, now) as slot:
                    advance(slot, bucket)
                    count(slot)
        return None

    def _log(self, limit: str, session: str, rate: int, **fields: str | None) -> None:
        """The refusal's one log line (``reason=`` as counted in `Refusals`)."""
        per = "hour" if limit == "user-message" else "minute"
        reason: Reason = _REASONS[limit]
        self.refusals.count(reason)
        log_event(
            log,
            "rate-limit",
            level=logging.WARNING,
            session=session,
            reason=reason,
            limit=limit,
            rate=f"{rate}/{per}",
            **{name: value for name, value in fields.items() if value is not None},
        )
