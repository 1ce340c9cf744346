"""The Authentication-Results header field (RFC 8601): writing ours, spotting forgeries.

Ours is one field, authserv-id = Petrel's hostname, with one entry per check:
``spf`` (MAIL FROM, or the HELO name for the null sender), ``dkim`` per signature,
``dmarc``, ``arc``. A field arriving with our authserv-id is a forgery (§5: an MTA
removes those) and `claims` finds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # intake imports `claims` for every message; dkimpy is not needed there
    from .dkimcheck import ArcOutcome, DkimOutcome
    from .dmarc import DmarcOutcome
    from .spf import SpfOutcome

__all__ = ["authentication_results", "authserv_id", "claims"]

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~@]+")  # a value needing no quotes
_COMMENT_RE = re.compile(r"\((?:[^()\\]|\\.)*\)")


def _value(text: str) -> str:
    if _TOKEN_RE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str | None) -> str:
    if not text:
        return ""
    safe = re.sub(r"[()\\\r\n]", " ", text)[:200].strip()
    return f" ({safe})" if safe else ""


def authentication_results(
    authserv_id: str,
    spf: SpfOutcome | None,
    dkim: Sequence[DkimOutcome],
    dmarc: DmarcOutcome | None,
    arc: ArcOutcome | None,
    *,
    mail_from: str,
) -> bytes:
    """The whole field, folded one entry a line, ending in CRLF."""
    entries: list[str] = []
    if spf is not None:
        identity = (
            f"smtp.mailfrom={_value(mail_from)}"
            if mail_from
            else (f"smtp.helo={_value(spf.domain)}")
        )
        problem = spf.problem if spf.result in ("temperror", "permerror") else None
        entries.append(f"spf={spf.result}{_comment(problem)} {identity}")
    if not dkim:
        entries.append("dkim=none")
    for signature in dkim:
        problem = None if signature.result == "pass" else signature.problem
        entries.append(
            f"dkim={signature.result}{_comment(problem)}"
            f" header.d={_value(signature.domain or 'unknown')}"
            f" header.s={_value(signature.selector or 'unknown')}"
        )
    if dmarc is not None:
        detail = dmarc.problem
        if dmarc.policy is not None:
            detail = f"p={dmarc.policy} dis={dmarc.disposition}"
        entries.append(
            f"dmarc={dmarc.result}{_comment(detail)} header.from={_value(dmarc.from_domain)}"
        )
    if arc is not None:
        entries.append(f"arc={arc.result}{_comment(arc.problem)}")
    return f"Authentication-Results: {authserv_id};\r\n\t".encode() + (
        ";\r\n\t".join(entries).encode("utf-8", "replace") + b"\r\n"
    )


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (comments dropped)."""
    head = _COMMENT_RE.sub(" ", value.split(";", 1)[0])
    words = head.split()
    return words[0].lower() if words else ""


def claims(value: str, hostname: str) -> bool:
    """True when a field's value claims to come from ``hostname`` (RFC 8601 §5)."""
    return authserv_id(value) == hostname.lower()
