"""`Checker`: SPF, DKIM, DMARC and ARC for one message, and its Authentication-Results.

SPF needs only the envelope, so `Checker.start_spf` begins it at MAIL and it runs while
the client sends RCPT and the text; `Checker.check` then verifies the signatures in a
worker thread (dkimpy is CPU-bound and synchronous; its key lookups come back to the
event loop), evaluates DMARC and writes the field. Nothing here raises for DNS trouble:
every failure is a temperror in the results.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from petrel.dkim.keys import SigningKey
from petrel.log import log_event

from . import dkimcheck, dmarc, spf
from .dkimcheck import ArcOutcome, DkimOutcome, KeyFetcher
from .dmarc import DmarcOutcome
from .dns import Lookups
from .results import authentication_results
from .spf import SpfOutcome

__all__ = ["Checker", "Findings", "SpfPair", "from_domain"]

log = logging.getLogger("petrel.mailauth")
THREADS = 4  # verifications at once; mostly they wait for key lookups


@dataclass(frozen=True, slots=True)
class SpfPair:
    """SPF for the MAIL FROM identity (``mail_from``; for the null sender the HELO
    identity stands in, RFC 7208 §2.4) and for HELO (§2.3)."""

    mail_from: SpfOutcome
    helo: SpfOutcome


@dataclass(frozen=True, slots=True)
class Findings:
    """Everything checked for one message, and the header field that says so."""

    spf: SpfPair
    dkim: tuple[DkimOutcome, ...]
    dmarc: DmarcOutcome
    arc: ArcOutcome
    field: bytes


def from_domain(header: bytes) -> str | None:
    """The one author domain of the From: field (RFC 7489 §6.6.1), or None when there
    is no From:, several, or addresses in more than one domain."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
    values = parsed.get_all("From") or []
    if len(values) != 1:
        return None
    domains = {
        address.rpartition("@")[2].lower().rstrip(".")
        for _, address in email.utils.getaddresses([str(values[0])])
        if "@" in address
    }
    return domains.pop() if len(domains) == 1 else None


class Checker:
    """One per process: the resolver's lookups and the verifying threads."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups
        self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="petrel-auth")

    def start_spf(self, ip: str, sender: str, helo: str, receiver: str) -> asyncio.Task[SpfPair]:
        """Begin SPF for a transaction (at MAIL); cancel the task if it is abandoned.
        ``receiver`` is our hostname (the %{r} of SPF explanations)."""
        return asyncio.ensure_future(self._spf(ip, sender, helo, receiver))

    async def _spf(self, ip: str, sender: str, helo: str, receiver: str) -> SpfPair:
        helo_check = spf.check_helo(self.lookups, ip, helo, receiver)
        if not sender:
            outcome = await helo_check
            return SpfPair(outcome, outcome)
        mail_from, helo_outcome = await asyncio.gather(
            spf.check_mail_from(self.lookups, ip, sender, helo, receiver), helo_check
        )
        return SpfPair(mail_from, helo_outcome)

    async def check(
        self,
        spf_task: asyncio.Task[SpfPair],
        sender: str,
        message: bytes,
        authserv_id: str,
        **context: str,
    ) -> Findings:
        """All checks for ``message`` as received (before our trace field); our field
        names ``authserv_id`` (the hostname); ``context`` goes into the log line."""
        header_end = message.find(b"\r\n\r\n")
        header = message if header_end < 0 else message[: header_end + 2]
        signatures: list[DkimOutcome] = []
        arc = ArcOutcome("none")
        names = header.lower()
        if b"dkim-signature:" in names or b"arc-seal:" in names:  # else dkimpy has no work
            loop = asyncio.get_running_loop()
            fetcher = KeyFetcher(self.lookups, loop)
            signatures, arc = await loop.run_in_executor(self._executor, _verify, message, fetcher)
        spf_pair = await spf_task
        author = from_domain(header)
        if author is None:
            dmarc_outcome = DmarcOutcome("permerror", "unknown", problem="no single From: domain")
        else:
            spf_outcome = spf_pair.mail_from
            spf_domain = spf_outcome.domain if spf_outcome.result == "pass" else None
            good = [s.domain for s in signatures if s.result == "pass"]
            dmarc_outcome = await dmarc.evaluate(self.lookups, author, spf_domain, good)
        field = authentication_results(
            authserv_id,
            spf_pair.mail_from,
            signatures,
            dmarc_outcome,
            arc,
            mail_from=sender,
        )
        log_event(
            log,
            "authentication",
            logging.INFO,
            **context,
            spf=spf_pair.mail_from.result,
            helo_spf=spf_pair.helo.result,
            dkim=",".join(s.result for s in signatures) or "none",
            dmarc=dmarc_outcome.result,
            arc=arc.result,
        )
        return Findings(spf_pair, tuple(signatures), dmarc_outcome, arc, field)

    async def seal(self, message: bytes, key: SigningKey, authserv_id: str) -> bytes:
        """An ARC set for ``message`` as it will be sent on (CPU work: in a thread)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, dkimcheck.seal_arc, message, key, authserv_id
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _verify(message: bytes, fetcher: KeyFetcher) -> tuple[list[DkimOutcome], ArcOutcome]:
    """The worker thread's part: every DKIM signature, then the ARC chain."""
    return dkimcheck.verify_dkim(message, fetcher), dkimcheck.verify_arc(message, fetcher)
