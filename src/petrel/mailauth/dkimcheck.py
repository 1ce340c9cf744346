"""DKIM (RFC 6376, RFC 8463) and ARC (RFC 8617) verification, and ARC sealing, with dkimpy.

The seal's RSA signatures are OpenSSL's (`petrel.dkim.openssl.ARC`), as the signer's.

dkimpy's verifiers are synchronous and CPU-bound, so they run in a worker thread; their
key lookups (``dnsfunc``) are sent back to the event loop, to Petrel's one resolver,
and the thread waits for the answer. Each lookup's outcome is remembered, so a
signature that failed because its key could not be fetched is a temperror (try again)
and one whose key does not exist a permerror, not a plain fail.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Literal

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from petrel.dkim.keys import SigningKey
from petrel.dkim.openssl import ARC

from .dns import DnsTempError, Lookups

__all__ = ["ArcOutcome", "DkimOutcome", "KeyFetcher", "seal_arc", "verify_arc", "verify_dkim"]

DkimResult = Literal["pass", "fail", "neutral", "temperror", "permerror"]
ArcResult = Literal["pass", "fail", "none"]
LOOKUP_WAIT = 30.0  # a bound for one key lookup seen from the thread ([dns] timeout is less)
MIN_KEY_BITS = 1024  # RFC 8301 §3.2: smaller RSA keys are not trusted

# dkimpy logs every failed signature at ERROR; a forged message is not Petrel's error.
_quiet = logging.getLogger("petrel.mailauth.dkimpy")
_quiet.setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    """One DKIM-Signature field's result; ``domain``/``selector`` its d= and s=."""

    result: DkimResult
    domain: str
    selector: str
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class ArcOutcome:
    """The chain validation status of RFC 8617 §5.2 (``none``: no ARC sets)."""

    result: ArcResult
    problem: str | None = None


@dataclass
class KeyFetcher:
    """dkimpy's ``dnsfunc``, called in the worker thread, answered on the event loop."""

    lookups: Lookups
    loop: asyncio.AbstractEventLoop
    failed: set[str] = field(default_factory=set)  # names whose lookup failed (temperror)
    missing: set[str] = field(default_factory=set)  # names with no record (NXDOMAIN/NODATA)

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace").rstrip(".").lower()
        future = asyncio.run_coroutine_threadsafe(self.lookups.txt(text), self.loop)
        try:
            answer = future.result(LOOKUP_WAIT)
        except (DnsTempError, TimeoutError) as exc:
            self.failed.add(text)
            raise dkim.DnsTimeoutError(str(exc)) from None
        if answer.void:
            self.missing.add(text)
            return None
        return answer.records[0].encode("utf-8", "replace")


def _signature_tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(parse_tag_value(value))
    except InvalidTagValueList:
        return {}


def verify_dkim(message: bytes, fetcher: KeyFetcher) -> list[DkimOutcome]:
    """Every DKIM-Signature of ``message``, top first (runs in a worker thread)."""
    headers, _ = dkim.rfc822_parse(message)
    signatures = [v for n, v in headers if n.lower() == b"dkim-signature"]
    outcomes = []
    for index, value in enumerate(signatures):
        tags = _signature_tags(value)
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        key_name = f"{selector}._domainkey.{domain}".lower()
        verifier = dkim.DKIM(message, logger=_quiet, minkey=MIN_KEY_BITS)
        try:
            good = verifier.verify(idx=index, dnsfunc=fetcher)
        except dkim.DKIMException as exc:
            # dkimpy raises for a changed body too: that is a fail (RFC 6376 §6.1.3),
            # a malformed signature or key a permerror.
            if str(exc).startswith("body hash mismatch"):
                outcomes.append(DkimOutcome("fail", domain, selector, "body hash did not verify"))
            else:
                outcomes.append(DkimOutcome("permerror", domain, selector, str(exc)[:200]))
            continue
        except Exception as exc:  # dkimpy on input it did not foresee: the mail still goes
            outcomes.append(DkimOutcome("permerror", domain, selector, type(exc).__name__))
            continue
        if good:
            outcomes.append(DkimOutcome("pass", domain, selector))
        elif key_name in fetcher.failed:
            outcomes.append(DkimOutcome("temperror", domain, selector, "key lookup failed"))
        elif key_name in fetcher.missing:
            outcomes.append(DkimOutcome("permerror", domain, selector, "no key"))
        else:
            outcomes.append(DkimOutcome("fail", domain, selector, "signature did not verify"))
    return outcomes


def verify_arc(message: bytes, fetcher: KeyFetcher) -> ArcOutcome:
    """The ARC chain of ``message`` (runs in a worker thread)."""
    try:
        status, _, reason = dkim.arc_verify(
            message, logger=_quiet, dnsfunc=fetcher, minkey=MIN_KEY_BITS
        )
    except Exception as exc:  # as in verify_dkim: a verifier's bug never costs the mail
        return ArcOutcome("fail", type(exc).__name__)
    if status == dkim.CV_Pass:
        return ArcOutcome("pass")
    if status == dkim.CV_None:
        return ArcOutcome("none")
    return ArcOutcome("fail", str(reason))


def seal_arc(message: bytes, key: SigningKey, authserv_id: str) -> bytes:
    """The next ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results;
    RFC 8617 §4) for ``message``, which carries our Authentication-Results field: its
    entries become the ARC-Authentication-Results, its ``arc=`` the seal's ``cv=``.
    ``key`` is an RSA key (ARC signs with rsa-sha256 only). Runs in a thread; what
    ``dkim.arc_sign`` does, its RSA step by OpenSSL.
    """
    fields = ARC(message, key.openssl).sign(
        key.selector.encode(), key.domain.encode(), key.private, authserv_id.encode()
    )
    return b"".join(f if f.endswith(b"\r\n") else f + b"\r\n" for f in fields)
