"""Reverse- and forward-path parsing (RFC 5321 §4.1.2, RFC 6531 §3.3)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from . import _abnf

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets.
MAX_PATH_OCTETS = 256
# RFC 5321 §4.5.3.1.2: a domain is at most 255 octets, a label at most 63.
MAX_DOMAIN_OCTETS = 255
MAX_LABEL_OCTETS = 63

_UNQUOTE_RE = re.compile(r"\\(.)")


class AddressError(ValueError):
    """A path that does not follow the grammar; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: ``local_part`` exactly as on the wire (quotes kept), ``domain`` as given.

    ``domain`` is empty only for the special recipient ``<Postmaster>`` (RFC 5321 §4.1.1.3).
    """

    local_part: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part

    @property
    def mailbox(self) -> str:
        """The local part with quoting removed: ``"a b"`` → ``a b``."""
        lp = self.local_part
        if len(lp) >= 2 and lp[0] == '"' and lp[-1] == '"':
            return _UNQUOTE_RE.sub(r"\1", lp[1:-1])
        return lp

    @property
    def is_quoted(self) -> bool:
        return self.local_part.startswith('"')

    @property
    def is_ascii(self) -> bool:
        return self.local_part.isascii() and self.domain.isascii()

    @property
    def is_bare_postmaster(self) -> bool:
        return not self.domain and self.local_part.lower() == "postmaster"

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")


def _check_domain(domain: str) -> None:
    if domain.startswith("["):
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            try:
                ipaddress.IPv6Address(inner[5:])
            except ValueError as exc:
                raise AddressError(f"bad IPv6 address literal {domain}") from exc
        return
    encoded = domain.encode("utf-8")
    if len(encoded) > MAX_DOMAIN_OCTETS:
        raise AddressError("domain longer than 255 octets")
    if any(len(label.encode("utf-8")) > MAX_LABEL_OCTETS for label in domain.split(".")):
        raise AddressError("domain label longer than 63 octets")


def parse_path(text: str) -> Address | None:
    """Parse ``<[route:]mailbox>``; ``<>`` gives ``None`` (the null reverse-path).

    Source routes (``<@a,@b:user@c>``) are accepted and dropped, as RFC 5321 §3.6.1
    and Appendix C require of a receiver.
    """
    if text == "<>":
        return None
    if len(text.encode("utf-8")) > MAX_PATH_OCTETS:
        raise AddressError("path longer than 256 octets")
    if _abnf.POSTMASTER_RE.fullmatch(text):
        return Address(text[1:-1], "")
    match = _abnf.PATH_RE.fullmatch(text)
    if match is None:
        raise AddressError(f"malformed path {text}")
    domain = match["domain"]
    _check_domain(domain)
    return Address(match["local"], domain)


def split_path(argument: str, *, lenient: bool) -> tuple[str, str]:
    """Split ``<path> params`` into the path text and the parameter text.

    With ``lenient`` a path without angle brackets (``MAIL From:user@domain``, as the
    classic telnet sessions type it) is accepted and given its brackets back.
    """
    argument = argument.lstrip(" ") if lenient else argument
    if argument.startswith("<"):
        if argument.startswith("<>"):
            end = 1
        else:
            # A quoted local part may contain ">", so let the grammar find the end.
            match = _abnf.PATH_RE.match(argument) or _abnf.POSTMASTER_RE.match(argument)
            end = match.end() - 1 if match else argument.find(">")
        if end < 0:
            raise AddressError("missing closing angle bracket")
        path, rest = argument[: end + 1], argument[end + 1 :]
        if rest and not rest.startswith(" "):
            raise AddressError("junk after the path")
        return path, rest.strip(" ")
    if not lenient:
        raise AddressError("path must be enclosed in angle brackets")
    token, _, rest = argument.partition(" ")
    if not token:
        raise AddressError("missing address")
    if token.lower() == "postmaster":
        return f"<{token}>", rest.strip(" ")
    if _abnf.MAILBOX_RE.fullmatch(token) is None:
        raise AddressError(f"malformed address {token}")
    return f"<{token}>", rest.strip(" ")
