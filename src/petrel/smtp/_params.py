"""ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2 esmtp-param).

Each parameter is accepted only when its extension is advertised: an unknown or
unadvertised keyword gets 555 5.5.4 (RFC 5321 §4.1.1.11), a duplicate or malformed
value 501 5.5.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import _abnf
from ._extensions import Extensions
from ._replies import Reply, echo, reply

MAX_ENVID_CHARS = 100  # RFC 3461 §4.4
MAX_ORCPT_CHARS = 500  # RFC 3461 §4.2
NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
BODY_VALUES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})


class ParameterError(ValueError):
    """Carries the reply that rejects the command."""

    def __init__(self, error_reply: Reply) -> None:
        super().__init__(str(error_reply))
        self.reply = error_reply


def _bad(text: str) -> ParameterError:
    return ParameterError(reply(501, "5.5.4", echo(text)))


def _unsupported(keyword: str) -> ParameterError:
    return ParameterError(reply(555, "5.5.4", echo(f"Unsupported parameter: {keyword}")))


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None
    body: str | None = None  # 7BIT | 8BITMIME | BINARYMIME
    smtputf8: bool = False
    ret: str | None = None  # FULL | HDRS (RFC 3461 §4.3)
    envid: str | None = None  # decoded xtext (RFC 3461 §4.4)
    auth: str | None = None  # decoded xtext; "<>" kept literally (RFC 4954 §5)
    by: tuple[int, str] | None = None  # (seconds, "R"/"N" + optional "T") (RFC 2852)


@dataclass(frozen=True, slots=True)
class RcptParams:
    notify: tuple[str, ...] | None = None  # ("NEVER",) or a subset of NOTIFY_VALUES
    orcpt: str | None = None  # "addr-type;decoded-address" (RFC 3461 §4.2)


_XTEXT_HEX_RE = re.compile(r"\+([0-9A-F]{2})")


def decode_xtext(value: str) -> str:
    """RFC 3461 §4: ``+XX`` hex escapes; raises ValueError on malformed xtext."""
    if _abnf.XTEXT_RE.fullmatch(value) is None:
        raise ValueError("malformed xtext")
    return _XTEXT_HEX_RE.sub(lambda m: chr(int(m[1], 16)), value)


def encode_xtext(value: str) -> str:
    """Inverse of :func:`decode_xtext` for ASCII text (used when relaying ORCPT/ENVID)."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in value)


def _split(text: str) -> list[tuple[str, str | None]]:
    """``A=1 B`` → [("A", "1"), ("B", None)], with keywords upper-cased."""
    pairs: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for item in text.split():
        keyword, sep, value = item.partition("=")
        if _abnf.ESMTP_KEYWORD_RE.fullmatch(keyword) is None:
            raise _bad(f"Malformed parameter: {item}")
        if sep and _abnf.ESMTP_VALUE_RE.fullmatch(value) is None:
            raise _bad(f"Malformed parameter value: {item}")
        keyword = keyword.upper()
        if keyword in seen:
            raise _bad(f"Duplicate parameter: {keyword}")
        seen.add(keyword)
        pairs.append((keyword, value if sep else None))
    return pairs


def _require(value: str | None, keyword: str) -> str:
    if value is None:
        raise _bad(f"{keyword} requires a value")
    return value


def parse_mail_params(text: str, ext: Extensions, *, esmtp: bool) -> MailParams:
    """Parse and validate MAIL FROM parameters against what ``ext`` advertises."""
    fields: dict[str, object] = {}
    for keyword, value in _split(text):
        if not esmtp:
            raise _unsupported(keyword)  # RFC 1869 §4.4: no parameters after HELO
        if keyword == "SIZE" and ext.size is not None:
            v = _require(value, keyword)
            if _abnf.SIZE_RE.fullmatch(v) is None:
                raise _bad("Bad SIZE parameter")
            size = int(v)
            if ext.size and size > ext.size:
                raise ParameterError(
                    reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
                )
            fields["size"] = size
        elif keyword == "BODY" and ext.eightbitmime:
            v = _require(value, keyword).upper()
            # BINARYMIME is advertised only together with CHUNKING (RFC 3030 §3).
            binary_ok = ext.binarymime and ext.chunking
            if v not in BODY_VALUES or (v == "BINARYMIME" and not binary_ok):
                raise _bad(f"Unsupported BODY type: {value}")
            fields["body"] = v
        elif keyword == "SMTPUTF8" and ext.smtputf8:
            if value is not None:
                raise _bad("SMTPUTF8 takes no value")
            fields["smtputf8"] = True
        elif keyword == "RET" and ext.dsn:
            v = _require(value, keyword).upper()
            if v not in ("FULL", "HDRS"):
                raise _bad("RET must be FULL or HDRS")
            fields["ret"] = v
        elif keyword == "ENVID" and ext.dsn:
            v = _require(value, keyword)
            try:
                envid = decode_xtext(v)
            except ValueError:
                raise _bad("ENVID is not valid xtext") from None
            if len(envid) > MAX_ENVID_CHARS:
                raise _bad("ENVID longer than 100 characters")
            fields["envid"] = envid
        elif keyword == "AUTH" and ext.auth:
            v = _require(value, keyword)
            if v != "<>":
                try:
                    v = decode_xtext(v)
                except ValueError:
                    raise _bad("AUTH parameter is not valid xtext") from None
            fields["auth"] = v
        elif keyword == "BY" and ext.deliverby is not None:
            fields["by"] = _parse_by(_require(value, keyword), ext.deliverby)
        else:
            raise _unsupported(keyword)
    return MailParams(**fields)  # type: ignore[arg-type]


def _parse_by(value: str, minimum: int) -> tuple[int, str]:
    """RFC 2852 §4: ``by-time;by-mode[T]``; R-mode needs a positive time ≥ our minimum."""
    match = _abnf.BY_RE.fullmatch(value)
    if match is None:
        raise _bad("Malformed BY parameter")
    seconds = int(match["time"])
    mode = match["mode"].upper() + match["trace"].upper()
    if mode.startswith("R"):
        if seconds <= 0:
            raise _bad("BY time must be positive with mode R")
        if seconds < minimum:
            raise ParameterError(
                reply(553, "5.5.4", f"BY time too short, minimum is {minimum} seconds")
            )
    return seconds, mode


def parse_rcpt_params(text: str, ext: Extensions, *, esmtp: bool) -> RcptParams:
    """Parse and validate RCPT TO parameters against what ``ext`` advertises."""
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for keyword, value in _split(text):
        if not esmtp:
            raise _unsupported(keyword)
        if keyword == "NOTIFY" and ext.dsn:
            items = tuple(v.upper() for v in _require(value, keyword).split(","))
            if items == ("NEVER",):
                notify = items
            elif "NEVER" in items:
                raise _bad("NOTIFY=NEVER must stand alone")
            elif not items or not set(items) <= NOTIFY_VALUES or len(set(items)) != len(items):
                raise _bad("NOTIFY takes NEVER or SUCCESS, FAILURE, DELAY")
            else:
                notify = items
        elif keyword == "ORCPT" and ext.dsn:
            match = _abnf.ORCPT_RE.fullmatch(_require(value, keyword))
            if match is None:
                raise _bad("ORCPT must be addr-type;address")
            try:
                address = decode_xtext(match["addr"])
            except ValueError:
                # RFC 6533 utf-8-addr-xtext allows raw UTF-8 as well.
                if match["type"].lower() != "utf-8":
                    raise _bad("ORCPT address is not valid xtext") from None
                address = match["addr"]
            if len(address) > MAX_ORCPT_CHARS:
                raise _bad("ORCPT longer than 500 characters")
            orcpt = f"{match['type']};{address}"
        else:
            raise _unsupported(keyword)
    return RcptParams(notify=notify, orcpt=orcpt)
