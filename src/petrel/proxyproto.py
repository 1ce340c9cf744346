"""The HAProxy PROXY protocol header (versions 1 and 2), parsed without I/O.

A load balancer in front of a listener with ``proxy_protocol = true`` sends this header
before anything else; it carries the address of the client it accepted. `parse` looks at
the octets received so far and says: `NeedMore` (with how many octets, in all, it needs
before it can say more — a caller reading a raw socket reads exactly that many, so it
never takes octets that follow the header), a `Header`, or an `Error`.

A `Header` with ``source`` None (v2 LOCAL, v1 UNKNOWN, a v2 family other than TCP over
IPv4/IPv6) means: use the real peer's address (a health check of the balancer itself).

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["V1_MAX", "V2_SIGNATURE", "Error", "Header", "NeedMore", "parse", "trusted"]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family/protocol, length

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_TCP4, _V2_TCP6 = 0x11, 0x21


@dataclass(frozen=True, slots=True)
class NeedMore:
    wanted: int  # octets in all (from the start) before parse can say more


@dataclass(frozen=True, slots=True)
class Header:
    source: tuple[str, int] | None  # None: use the real peer
    destination: tuple[str, int] | None
    length: int  # octets of the header; what follows belongs to the protocol behind it
    version: int


@dataclass(frozen=True, slots=True)
class Error:
    reason: str


def parse(buffer: bytes) -> NeedMore | Header | Error:
    """Parse the PROXY header at the start of ``buffer``."""
    if buffer[:12] == V2_SIGNATURE[: len(buffer)] and buffer:
        return _parse_v2(buffer)
    if buffer[:6] == V1_PREFIX[: len(buffer)]:
        return _parse_v1(buffer)
    return Error("no PROXY header")


def _parse_v1(buffer: bytes) -> NeedMore | Header | Error:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX:
            return Error("PROXY v1 line too long")
        return NeedMore(len(buffer) + 1)
    try:
        line = buffer[:end].decode("ascii")
    except UnicodeDecodeError:
        return Error("PROXY v1 line is not ASCII")
    parts = line.split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return Header(None, None, length, 1)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        return Error("malformed PROXY v1 line")
    version = 4 if parts[1] == "TCP4" else 6
    try:
        src = ipaddress.ip_address(parts[2])
        dst = ipaddress.ip_address(parts[3])
    except ValueError:
        return Error("bad address in PROXY v1 line")
    if src.version != version or dst.version != version:
        return Error(f"address family does not match {parts[1]} in PROXY v1 line")
    sport, dport = _port(parts[4]), _port(parts[5])
    if sport is None or dport is None:
        return Error("bad port in PROXY v1 line")
    return Header((str(src), sport), (str(dst), dport), length, 1)


def _port(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if port <= 65535 else None


def _parse_v2(buffer: bytes) -> NeedMore | Header | Error:
    if len(buffer) < _V2_FIXED:
        return NeedMore(_V2_FIXED)
    version, command = buffer[12] >> 4, buffer[12] & 0x0F
    if version != 2:
        return Error(f"unsupported PROXY protocol version {version}")
    if command not in (_V2_LOCAL, _V2_PROXY):
        return Error(f"unknown PROXY v2 command {command}")
    family = buffer[13]
    size = int.from_bytes(buffer[14:16], "big")
    length = _V2_FIXED + size
    if len(buffer) < length:
        return NeedMore(length)
    body = buffer[_V2_FIXED:length]
    if command == _V2_LOCAL:
        return Header(None, None, length, 2)
    if family == _V2_TCP4:
        if size < 12:
            return Error("PROXY v2 IPv4 addresses truncated")
        return Header(
            (str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big")),
            (str(ipaddress.IPv4Address(body[4:8])), int.from_bytes(body[10:12], "big")),
            length,
            2,
        )
    if family == _V2_TCP6:
        if size < 36:
            return Error("PROXY v2 IPv6 addresses truncated")
        return Header(
            (str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big")),
            (str(ipaddress.IPv6Address(body[16:32])), int.from_bytes(body[34:36], "big")),
            length,
            2,
        )
    # UNSPEC, UNIX sockets, UDP: the specification says to use the real connection.
    return Header(None, None, length, 2)


def trusted(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """May the peer at ``ip`` send a PROXY header (is it in one of ``networks``)?"""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)
