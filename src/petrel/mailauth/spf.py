"""SPF (RFC 7208): Petrel's own ``check_host()``, on Petrel's asynchronous resolver.

No well-kept SPF library can use an asyncio resolver (pyspf calls DNS synchronously),
so this module is the RFC's algorithm, checked against the RFC 7208 test suite
(tests/spf/rfc7208-tests.yml): the record is parsed whole before anything is
evaluated (§4.6: any syntax error is a permerror), then its directives in order;
mechanisms ``all include a mx ptr ip4 ip6 exists``, modifiers ``redirect`` and ``exp``
(unknown ones ignored), macros (§7), at most 10 terms that query DNS and 2 void lookups
(§4.6.4), temperror for a lookup that failed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from .dns import DnsTempError, Lookups

__all__ = ["SpfOutcome", "SpfResult", "check_helo", "check_host", "check_mail_from"]

SpfResult = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_TERM_LIMIT = 10  # §4.6.4: include, a, mx, ptr, exists, redirect
VOID_LIMIT = 2  # §4.6.4: lookups answered NXDOMAIN or with no records
MX_ADDRESS_LIMIT = 10  # §4.6.4: an "mx" with more MX records is a permerror
PTR_NAME_LIMIT = 10  # §4.6.4: names of a PTR answer looked at, the rest ignored
OVERALL_TIMEOUT = 20.0  # §4.6.4: at least 20 seconds for the whole evaluation

_QUALIFIERS: dict[str, SpfResult] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
_MODIFIER_RE = re.compile(r"([a-z][a-z0-9\-_.]*)=(.*)", re.I | re.S)
_MECHANISM_RE = re.compile(r"([+\-~?]?)([a-z][a-z0-9\-_.]*)(.*)", re.I | re.S)
_CIDR_RE = re.compile(r"(.*?)(?:/(0|[1-9][0-9]{0,2}))?(?://(0|[1-9][0-9]{0,2}))?", re.S)
_TOPLABEL = r"(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9\-]*[a-z0-9])"
_DOMAIN_END_RE = re.compile(r"\." + _TOPLABEL + r"\.?\Z", re.I)
_MACRO_BODY_RE = re.compile(r"([a-z])([0-9]*)(r?)([.\-+,/_=]*)", re.I)
_IP4_RE = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
)
_VERSION_RE = re.compile(r"v=spf1(?: |\Z)", re.I)


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """What ``check_host()`` found for one identity.

    ``domain`` is the domain checked (the MAIL FROM domain, or the HELO name);
    ``explanation`` the ``exp=`` text of a fail; ``problem`` why it is a temperror
    or permerror, for the Authentication-Results comment and the log.
    """

    result: SpfResult
    domain: str
    sender: str
    explanation: str | None = None
    problem: str | None = None


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(slots=True)
class _Term:
    """One directive (``qualifier`` set) or modifier (``qualifier`` empty) of a record."""

    name: str
    qualifier: str
    argument: str | None = None  # domain-spec, network, or modifier value
    cidr4: int | None = None
    cidr6: int | None = None


@dataclass(slots=True)
class _Record:
    directives: list[_Term] = field(default_factory=list)
    redirect: str | None = None
    exp: str | None = None


async def check_mail_from(
    lookups: Lookups, ip: str, mail_from: str, helo: str, receiver: str = "unknown"
) -> SpfOutcome:
    """SPF for the MAIL FROM identity; the null sender is checked as postmaster@HELO
    (§2.4)."""
    if not mail_from:
        return await check_host(lookups, ip, helo, f"postmaster@{helo}", helo, receiver)
    local, _, domain = mail_from.rpartition("@")
    return await check_host(
        lookups, ip, domain, f"{local or 'postmaster'}@{domain}", helo, receiver
    )


async def check_helo(lookups: Lookups, ip: str, helo: str, receiver: str = "unknown") -> SpfOutcome:
    """SPF for the HELO identity (§2.3)."""
    return await check_host(lookups, ip, helo, f"postmaster@{helo}", helo, receiver)


async def check_host(
    lookups: Lookups,
    ip: str,
    domain: str,
    sender: str,
    helo: str,
    receiver: str = "unknown",
) -> SpfOutcome:
    """RFC 7208 §4: the SPF result for ``domain`` and the client ``ip``. Never raises
    for DNS trouble: a failed lookup is temperror."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    evaluation = _Evaluation(lookups, address, sender, helo, receiver)
    domain = domain[:-1] if domain.endswith(".") else domain
    if not _valid_domain(domain):
        return SpfOutcome("none", domain, sender, problem="not a valid domain name")
    try:
        async with asyncio.timeout(OVERALL_TIMEOUT):
            result, explanation = await evaluation.check(domain)
    except _PermError as exc:
        return SpfOutcome("permerror", domain, sender, problem=str(exc))
    except (_TempError, TimeoutError) as exc:
        return SpfOutcome("temperror", domain, sender, problem=str(exc) or "DNS timeout")
    return SpfOutcome(result, domain, sender, explanation)


def _valid_domain(domain: str) -> bool:
    """§4.3: a multi-label name, no label empty or longer than 63 octets."""
    labels = domain.split(".")
    return (
        len(labels) > 1
        and len(domain) <= 253
        and all(0 < len(label) <= 63 for label in labels)
        and not domain.startswith("[")
    )


class _Evaluation:
    """One ``check_host()`` call with its includes and redirects: the shared limits."""

    def __init__(
        self, lookups: Lookups, ip: IPAddress, sender: str, helo: str, receiver: str
    ) -> None:
        self.lookups = lookups
        self.ip = ip
        self.sender = sender
        self.local, _, self.sender_domain = sender.rpartition("@")
        self.helo = helo
        self.receiver = receiver
        self.dns_terms = 0
        self.voids = 0

    @property
    def ipv6(self) -> bool:
        return isinstance(self.ip, ipaddress.IPv6Address)

    # -- the algorithm ---------------------------------------------------------------

    async def check(self, domain: str) -> tuple[SpfResult, str | None]:
        record = await self._record(domain)
        if record is None:
            return "none", None
        for term in record.directives:
            if await self._matches(term, domain):
                result = _QUALIFIERS[term.qualifier]
                explanation = None
                if result == "fail" and record.exp is not None:
                    explanation = await self._explain(record.exp, domain)
                return result, explanation
        if record.redirect is not None:
            self._count_dns_term()
            target = await self._expand_domain(record.redirect, domain)
            if not _valid_domain(target):
                raise _PermError(f"redirect to an invalid name {target!r}")
            result, explanation = await self.check(target)
            if result == "none":
                raise _PermError(f"redirect={target}: no SPF record")
            return result, explanation
        return "neutral", None

    async def _record(self, domain: str) -> _Record | None:
        """The one SPF record of ``domain``, parsed; None for none (§4.4, §4.5)."""
        try:
            answer = await self.lookups.txt(domain)
        except DnsTempError as exc:
            raise _TempError(f"TXT lookup for {domain}: {exc}") from None
        records = [r for r in answer.records if _VERSION_RE.match(r)]
        if not records:
            return None
        if len(records) > 1:
            raise _PermError(f"{domain} has {len(records)} SPF records")
        text = records[0]
        if not text.isascii() or not text.isprintable():
            raise _PermError(f"the SPF record of {domain} is not 7-bit ASCII text")
        return _parse(text)

    async def _matches(self, term: _Term, domain: str) -> bool:
        name = term.name
        if name in _DNS_MECHANISMS:
            self._count_dns_term()
        if name == "all":
            return True
        if name == "ip4" or name == "ip6":
            assert term.argument is not None
            if (name == "ip6") != self.ipv6:
                return False
            network = ipaddress.ip_network(term.argument)
            return self.ip in network
        assert term.argument is not None or name in ("a", "mx", "ptr")
        target = (
            domain if term.argument is None else await self._expand_domain(term.argument, domain)
        )
        if name == "include":
            if not _valid_domain(target):
                raise _PermError(f"include of an invalid name {target!r}")
            result, _ = await self.check(target)
            if result == "pass":
                return True
            if result in ("fail", "softfail", "neutral"):
                return False
            raise _PermError(f"include:{target}: no SPF record")
        if name == "a":
            return self._in(await self._addresses(target, self.ipv6, count_void=True), term)
        if name == "mx":
            return await self._mx_matches(target, term)
        if name == "ptr":
            return await self._ptr_matches(target)
        # exists: an A lookup whatever the client's family (§5.7)
        return bool(await self._addresses(target, False, count_void=True))

    async def _mx_matches(self, target: str, term: _Term) -> bool:
        try:
            answer = await self.lookups.mx(target)
        except DnsTempError as exc:
            raise _TempError(f"MX lookup of {target}: {exc}") from None
        if answer.void:
            self._void()
            return False
        if len(answer.records) > MX_ADDRESS_LIMIT:
            raise _PermError(f"{target} has more than {MX_ADDRESS_LIMIT} MX records")
        for _, exchange in sorted(answer.records):
            if self._in(await self._addresses(exchange, self.ipv6), term):
                return True
        return False

    async def _ptr_matches(self, target: str) -> bool:
        names = await self._validated_names()
        target = target.lower().rstrip(".")
        return any(n == target or n.endswith("." + target) for n in names)

    async def _validated_names(self) -> list[str]:
        """§5.5: the client's PTR names whose addresses include the client."""
        try:
            answer = await self.lookups.ptr(str(self.ip))
        except DnsTempError:
            return []  # §5.5: a DNS error here is no match
        validated = []
        for name in answer.records[:PTR_NAME_LIMIT]:
            try:
                found = await self.lookups.addresses(name, self.ipv6)
            except DnsTempError:
                continue
            if any(ipaddress.ip_address(a) == self.ip for a in found.records):
                validated.append(name.lower().rstrip("."))
        return validated

    async def _addresses(self, name: str, ipv6: bool, count_void: bool = False) -> list[IPAddress]:
        if not _valid_domain(name.rstrip(".")):
            if count_void:
                self._void()
            return []
        try:
            answer = await self.lookups.addresses(name, ipv6)
        except DnsTempError as exc:
            raise _TempError(f"address lookup of {name}: {exc}") from None
        if count_void and answer.void:
            self._void()
        return [ipaddress.ip_address(a) for a in answer.records]

    def _in(self, addresses: list[IPAddress], term: _Term) -> bool:
        for address in addresses:
            if isinstance(address, ipaddress.IPv4Address):
                bits = 32 if term.cidr4 is None else term.cidr4
            else:
                bits = 128 if term.cidr6 is None else term.cidr6
            if type(address) is type(self.ip) and self.ip in ipaddress.ip_network(
                (address, bits), strict=False
            ):
                return True
        return False

    def _count_dns_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > DNS_TERM_LIMIT:
            raise _PermError(f"more than {DNS_TERM_LIMIT} DNS-querying terms")

    def _void(self) -> None:
        self.voids += 1
        if self.voids > VOID_LIMIT:
            raise _PermError(f"more than {VOID_LIMIT} void lookups")

    # -- exp= and macros ---------------------------------------------------------------

    async def _explain(self, spec: str, domain: str) -> str | None:
        """§6.2: the explanation of a fail; any trouble means none (the default)."""
        try:
            target = await self._expand_domain(spec, domain)
            answer = await self.lookups.txt(target)
            if len(answer.records) != 1:
                return None
            text = answer.records[0]
            if not text.isascii():
                return None
            return await self._expand(text, domain, explain=True)
        except (_PermError, _TempError, DnsTempError):
            return None

    async def _expand_domain(self, spec: str, domain: str) -> str:
        name = await self._expand(spec, domain)
        while len(name.rstrip(".")) > 253:  # §7.3: drop labels from the left
            name = name.partition(".")[2]
        return name.rstrip(".") if not name.endswith("..") else name

    async def _expand(self, text: str, domain: str, explain: bool = False) -> str:
        out: list[str] = []
        pos = 0
        while pos < len(text):
            char = text[pos]
            if char != "%":
                out.append(char)
                pos += 1
                continue
            following = text[pos + 1 : pos + 2]
            if following in ("%", "_", "-"):
                out.append({"%": "%", "_": " ", "-": "%20"}[following])
                pos += 2
                continue
            end = text.find("}", pos)
            match = _MACRO_BODY_RE.fullmatch(text, pos + 2, end) if following == "{" else None
            if match is None:
                raise _PermError(f"bad macro in {text!r}")
            letter, digits, reverse, delimiters = match.groups()
            value = await self._macro(letter.lower(), domain, explain)
            parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                count = int(digits)
                if count == 0:
                    raise _PermError("macro with a zero transformer")
                parts = parts[-count:]
            value = ".".join(parts)
            if letter.isupper():
                value = urllib.parse.quote(value, safe="")
            out.append(value)
            pos = end + 1
        return "".join(out)

    async def _macro(self, letter: str, domain: str, explain: bool) -> str:
        if letter in "crt" and not explain:
            raise _PermError(f"macro %{{{letter}}} outside exp")
        match letter:
            case "s":
                return self.sender
            case "l":
                return self.local
            case "o":
                return self.sender_domain
            case "d":
                return domain
            case "i":
                if isinstance(self.ip, ipaddress.IPv4Address):
                    return str(self.ip)
                return ".".join(self.ip.exploded.replace(":", ""))
            case "p":
                names = await self._validated_names()
                domain_l = domain.lower()
                for name in names:
                    if name == domain_l or name.endswith("." + domain_l):
                        return name
                return names[0] if names else "unknown"
            case "v":
                return "ip6" if self.ipv6 else "in-addr"
            case "h":
                return self.helo
            case "c":
                return str(self.ip)
            case "r":
                return self.receiver
            case "t":
                return str(int(time.time()))
        raise _PermError(f"unknown macro letter {letter!r}")


def _parse(text: str) -> _Record:
    """§4.6: the whole record, or a _PermError for its first syntax error."""
    record = _Record()
    for word in text.split(" ")[1:]:
        if not word:
            continue
        modifier = _MODIFIER_RE.fullmatch(word)
        mechanism = _MECHANISM_RE.fullmatch(word)
        if modifier is not None and (mechanism is None or mechanism[3][:1] not in (":", "/")):
            name, value = modifier[1].lower(), modifier[2]
            _check_macro_string(value)
            if name in ("redirect", "exp"):
                if getattr(record, name) is not None:
                    raise _PermError(f"{name}= given twice")
                _check_domain_spec(value)
                setattr(record, name, value)
            continue
        if mechanism is None:
            raise _PermError(f"bad term {word!r}")
        qualifier, name, rest = mechanism[1] or "+", mechanism[2].lower(), mechanism[3]
        if name not in _MECHANISMS:
            raise _PermError(f"unknown mechanism {name!r}")
        record.directives.append(_directive(qualifier, name, rest, word))
    return record


def _directive(qualifier: str, name: str, rest: str, word: str) -> _Term:
    if name == "all":
        if rest:
            raise _PermError(f"bad term {word!r}")
        return _Term(name, qualifier)
    if name in ("ip4", "ip6"):
        return _network_term(qualifier, name, rest, word)
    if name in ("include", "exists"):
        if not rest.startswith(":") or len(rest) == 1:
            raise _PermError(f"{name} needs a domain: {word!r}")
        _check_domain_spec(rest[1:])
        return _Term(name, qualifier, rest[1:])
    if name == "ptr":
        if not rest:
            return _Term(name, qualifier)
        if not rest.startswith(":") or len(rest) == 1:
            raise _PermError(f"bad term {word!r}")
        _check_domain_spec(rest[1:])
        return _Term(name, qualifier, rest[1:])
    # a and mx: [":" domain-spec] [dual-cidr-length]
    match = _CIDR_RE.fullmatch(rest)
    assert match is not None
    spec, cidr4, cidr6 = match.groups()
    term = _Term(
        name,
        qualifier,
        cidr4=None if cidr4 is None else int(cidr4),
        cidr6=None if cidr6 is None else int(cidr6),
    )
    if (term.cidr4 or 0) > 32 or (term.cidr6 or 0) > 128:
        raise _PermError(f"bad prefix length in {word!r}")
    if spec:
        if not spec.startswith(":") or len(spec) == 1:
            raise _PermError(f"bad term {word!r}")
        _check_domain_spec(spec[1:])
        term.argument = spec[1:]
    return term


def _network_term(qualifier: str, name: str, rest: str, word: str) -> _Term:
    network, slash, length = rest[1:].partition("/")
    if not rest.startswith(":") or (slash and not re.fullmatch(r"0|[1-9][0-9]{0,2}", length)):
        raise _PermError(f"bad term {word!r}")
    bits = 32 if name == "ip4" else 128
    prefix = int(length) if slash else bits
    if prefix > bits:
        raise _PermError(f"bad prefix length in {word!r}")
    try:
        if name == "ip4":
            if not _IP4_RE.fullmatch(network):
                raise ValueError(network)
            address: IPAddress = ipaddress.IPv4Address(network)
        else:
            address = ipaddress.IPv6Address(network)
    except ValueError:
        raise _PermError(f"bad address in {word!r}") from None
    return _Term(name, qualifier, str(ipaddress.ip_network((address, prefix), strict=False)))


def _check_macro_string(text: str) -> None:
    """Syntax only: every ``%`` starts a valid macro, none of the exp-only letters
    ``c r t`` (§7.1, §7.2)."""
    pos = text.find("%")
    while pos >= 0:
        following = text[pos + 1 : pos + 2]
        if following in ("%", "_", "-"):
            pos = text.find("%", pos + 2)
            continue
        end = text.find("}", pos)
        match = _MACRO_BODY_RE.fullmatch(text, pos + 2, end) if end >= 0 else None
        if following != "{" or match is None or match[1].lower() in "crt":
            raise _PermError(f"bad macro in {text!r}")
        pos = text.find("%", end)


def _check_domain_spec(spec: str) -> None:
    """§7.1 domain-spec: a macro-string ending in a macro or in ``.toplabel``."""
    _check_macro_string(spec)
    if spec.endswith("}") or re.search(r"%[%_\-]\Z", spec):
        return
    if not _DOMAIN_END_RE.search(spec):
        raise _PermError(f"bad domain {spec!r}")
