"""DMARC (RFC 7489): policy discovery, identifier alignment, the disposition.

The organisational domain (§3.2) comes from the Public Suffix List that the
``publicsuffixlist`` package bundles (refreshed with each of its releases); a name
under no listed suffix counts its last label as the suffix, as the list's ``*`` rule
says.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from publicsuffixlist import PublicSuffixList

from .dns import DnsTempError, Lookups

__all__ = [
    "DmarcOutcome",
    "DmarcRecord",
    "aligned",
    "evaluate",
    "organizational_domain",
    "parse_record",
]

Policy = Literal["none", "quarantine", "reject"]
DmarcResult = Literal["pass", "fail", "none", "temperror", "permerror"]
_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # parses the bundled list once (some 30 ms)


def organizational_domain(domain: str) -> str:
    """§3.2: the registrable domain, e.g. ``example.co.uk`` for ``mail.example.co.uk``."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, strict: bool) -> bool:
    """§3.1: identical names (strict), or the same organisational domain (relaxed)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if a == b:
        return True
    return not strict and organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags of a policy record that decide what happens (§6.3); reports are not
    sent, so ``rua``/``ruf`` are only read to apply §6.6.3's p=none rule."""

    p: Policy
    sp: Policy | None = None
    pct: int = 100
    adkim_strict: bool = False
    aspf_strict: bool = False


def parse_record(text: str) -> DmarcRecord | None:
    """A ``v=DMARC1`` record, or None for text that is none (§6.3, §6.6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
        elif part.strip():
            return None
    if text.split(";", 1)[0].replace(" ", "").replace("\t", "") != "v=DMARC1":
        return None
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() or None
    if p not in _POLICIES or (sp is not None and sp not in _POLICIES):
        if not tags.get("rua", "").strip():
            return None
        p, sp = "none", None  # §6.6.3: a bad p with a report address acts as p=none
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isdigit() and int(pct_text) <= 100 else 100
    return DmarcRecord(
        p=_policy(p),
        sp=None if sp is None else _policy(sp),
        pct=pct,
        adkim_strict=tags.get("adkim", "r").lower() == "s",
        aspf_strict=tags.get("aspf", "r").lower() == "s",
    )


def _policy(text: str) -> Policy:
    for policy in _POLICIES:
        if policy == text:
            return policy
    raise ValueError(text)


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    """The result for the From: domain, the policy that applies to it (p, or sp for a
    subdomain under its organisation's record) and the disposition after ``pct``."""

    result: DmarcResult
    from_domain: str
    policy: Policy | None = None
    disposition: Policy = "none"
    problem: str | None = None


async def _discover(lookups: Lookups, from_domain: str) -> tuple[DmarcRecord, bool] | None:
    """§6.6.3: the record at ``_dmarc.<From domain>``, else at the organisational
    domain's; (record, found for the organisation). DnsTempError passes through."""
    org = organizational_domain(from_domain)
    for domain in dict.fromkeys((from_domain, org)):
        answer = await lookups.txt(f"_dmarc.{domain}")
        records = [r for r in map(parse_record, answer.records) if r is not None]
        if len(records) > 1:
            return None  # several records: no DMARC processing
        if records:
            return records[0], domain != from_domain
    return None


async def evaluate(
    lookups: Lookups,
    from_domain: str,
    spf_domain: str | None,
    dkim_domains: Iterable[str],
    sample: Callable[[], float] = random.random,
) -> DmarcOutcome:
    """DMARC for a message whose From: domain is ``from_domain``.

    ``spf_domain``: the MAIL FROM domain if SPF passed for it (else None);
    ``dkim_domains``: the d= of every signature that verified. ``sample`` draws the
    ``pct`` sample (§6.6.4): a failure outside it gets the next milder policy.
    """
    from_domain = from_domain.lower().rstrip(".")
    try:
        found = await _discover(lookups, from_domain)
    except DnsTempError as exc:
        return DmarcOutcome("temperror", from_domain, problem=str(exc))
    if found is None:
        return DmarcOutcome("none", from_domain)
    record, inherited = found
    policy = record.sp if inherited and record.sp is not None else record.p
    spf_ok = spf_domain is not None and aligned(spf_domain, from_domain, record.aspf_strict)
    dkim_ok = any(aligned(d, from_domain, record.adkim_strict) for d in dkim_domains)
    if spf_ok or dkim_ok:
        return DmarcOutcome("pass", from_domain, policy)
    disposition = policy
    if policy != "none" and record.pct < 100 and sample() * 100 >= record.pct:
        disposition = "quarantine" if policy == "reject" else "none"
    return DmarcOutcome("fail", from_domain, policy, disposition)
