"""The PROXY header parser (sans-IO): v1 and v2, IPv4 and IPv6, and what it refuses."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from petrel.proxyproto import V2_SIGNATURE, Error, Header, NeedMore, parse


def v2(src: str, dst: str, sport: int, dport: int, command: int = 1, tlv: bytes = b"") -> bytes:
    """A v2 PROXY header over TCP, built the way the specification lays it out."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + struct.pack("!HH", sport, dport) + tlv
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def test_v1_tcp4() -> None:
    data = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n"
    header = parse(data)
    assert header == Header(("192.0.2.7", 40000), ("198.51.100.1", 25), 44, 1)
    assert data[header.length :] == b"EHLO x\r\n"


def test_v1_tcp6() -> None:
    header = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n")
    assert isinstance(header, Header)
    assert header.source == ("2001:db8::7", 40000)


def test_v1_unknown_means_the_real_peer() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == Header(None, None, 15, 1)
    assert parse(b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n") == Header(None, None, 33, 1)


def test_v2_ipv4_and_ipv6_with_tlvs() -> None:
    data = v2("192.0.2.7", "198.51.100.1", 40000, 25, tlv=b"\x04\x00\x01x")
    assert parse(data + b"\x16\x03") == Header(
        ("192.0.2.7", 40000), ("198.51.100.1", 25), len(data), 2
    )
    header = parse(v2("2001:db8::7", "2001:db8::1", 1, 2))
    assert isinstance(header, Header)
    assert header.source == ("2001:db8::7", 1)


def test_v2_local_means_the_real_peer() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local) == Header(None, None, 16, 2)


@pytest.mark.parametrize(
    "whole",
    [b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n", v2("192.0.2.7", "192.0.2.8", 1, 2)],
)
def test_need_more_names_octets_that_never_pass_the_header(whole: bytes) -> None:
    """Reading exactly ``wanted`` octets each time ends at the header's last octet."""
    buffer = b""
    while isinstance(result := parse(buffer), NeedMore):
        assert len(buffer) < result.wanted <= len(whole)
        buffer = whole[: result.wanted]
    assert result == parse(whole)
    assert isinstance(result, Header) and result.length == len(buffer) == len(whole)


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO client.example\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",
        b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
        b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 65536\r\n",
        b"PROXY TCP4 192.0.2.x 198.51.100.1 1 2\r\n",
        b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 " + b"1" * 100,  # no CRLF within 107 octets
        V2_SIGNATURE + b"\x10\x11\x00\x0c" + bytes(12),  # version 1 in a v2 signature
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # IPv4 addresses cut short
    ],
)
def test_malformed_headers_are_errors(data: bytes) -> None:
    assert isinstance(parse(data), Error)
