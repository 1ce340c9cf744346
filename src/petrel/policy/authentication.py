"""What the inbound checks' findings mean for a message: deliver, file as junk, refuse.

RFC 7489 §6.7 leaves enforcement to the receiver; Petrel follows what opendmarc
does for Postfix: with ``[authentication] dmarc_enforce``, a DMARC fail whose
disposition (after ``pct``) is reject is refused at the end of DATA, quarantine is
delivered to the Junk folder. An SPF fail alone refuses only with ``spf_reject``
(RFC 7208 §8.4). A temperror never refuses: the message is taken with the result
recorded, so a DNS outage costs no mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from petrel.config import AuthenticationSection
from petrel.mailauth.dmarc import DmarcOutcome
from petrel.mailauth.spf import SpfOutcome
from petrel.smtp import Reply, reply

__all__ = ["Judgement", "judge"]


@dataclass(frozen=True, slots=True)
class Judgement:
    """``refusal`` set: answer it and keep nothing; else deliver, ``junk`` to Junk."""

    refusal: Reply | None = None
    junk: bool = False


def judge(section: AuthenticationSection, spf: SpfOutcome, dmarc: DmarcOutcome) -> Judgement:
    if section.dmarc_enforce and dmarc.result == "fail":
        if dmarc.disposition == "reject":
            return Judgement(
                reply(
                    550,
                    "5.7.1",
                    f"Message refused: the DMARC policy of {dmarc.from_domain} is reject"
                    " and neither SPF nor DKIM authenticated that From: domain",
                )
            )
        if dmarc.disposition == "quarantine":
            return Judgement(junk=True)
    if section.spf_reject and spf.result == "fail":
        # The sender's exp= text: printable ASCII only, and short, in our reply.
        why = spf.explanation or f"{spf.domain} does not allow this host to send its mail"
        why = re.sub(r"[^\x20-\x7e]", "?", why)[:200]
        return Judgement(reply(550, "5.7.23", f"SPF check failed: {why}"))
    return Judgement()
