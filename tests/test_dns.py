"""petrel.dns against a real authoritative server (Knot on loopback, tests/dns_server.py)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, RawClient
from dns_server import DnsServer, reverse_name, txt
from petrel.config import ConfigError, DnsSection, load_config
from petrel.dns import MX, Lookup, Resolver, Status

LONG = "v=DKIM1; k=rsa; p=" + "A" * 400  # longer than one 255-octet TXT string


def _resolver(*nameservers: str, timeout: float = 2.0) -> Resolver:
    servers = []
    for ns in nameservers:
        host, _, port = ns.rpartition(":")
        servers.append((host, int(port)))
    return Resolver(DnsSection(tuple(servers), timeout))


def _run(coro: object) -> Lookup[object]:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def zones(dns_server: DnsServer) -> DnsServer:
    dns_server.zone(
        "example.test",
        [
            "@ MX 20 mx2",
            "@ MX 10 mx1",
            "mx1 A 127.0.0.5",
            "mx1 AAAA ::1",
            "mx2 A 127.0.0.6",
            f"@ TXT {txt('v=spf1 -all')}",
            f"s1._domainkey TXT {txt(LONG)}",
            'empty TXT ""',
        ],
    )
    dns_server.zone("127.in-addr.arpa", [f"{reverse_name('127.0.0.5')} PTR mx1.example.test."])
    return dns_server


def test_answers_of_each_type(zones: DnsServer) -> None:
    dns = _resolver(zones.address)

    async def ask() -> list[Lookup[object]]:
        return list(
            await asyncio.gather(
                dns.mx("example.test"),
                dns.txt("example.test"),
                dns.txt("s1._domainkey.example.test"),
                dns.a("mx1.example.test"),
                dns.aaaa("mx1.example.test"),
                dns.addresses("mx1.example.test"),
                dns.ptr("127.0.0.5"),
            )
        )

    mx, spf, dkim, a, aaaa, both, ptr = asyncio.run(ask())
    assert mx == Lookup(Status.OK, (MX(10, "mx1.example.test"), MX(20, "mx2.example.test")))
    assert spf.records == ("v=spf1 -all",)
    assert dkim.records == (LONG,)  # the 255-octet strings joined again
    assert a.records == ("127.0.0.5",) and aaaa.records == ("::1",)
    assert both.records == ("127.0.0.5", "::1")
    assert ptr.records == ("mx1.example.test",)


def test_no_such_name_no_data_and_temporary_failure_differ(
    zones: DnsServer, silent_nameserver: str
) -> None:
    dns = _resolver(zones.address)
    assert _run(dns.txt("missing.example.test")).status is Status.NXDOMAIN
    assert _run(dns.addresses("missing.example.test")).status is Status.NXDOMAIN
    assert _run(dns.mx("mx1.example.test")).status is Status.NODATA  # exists, no MX
    assert _run(dns.ptr("127.0.0.99")).status is Status.NXDOMAIN
    assert _run(dns.ptr("not an address")).status is Status.NXDOMAIN
    # A zone the server does not serve: REFUSED, which says nothing about the name.
    refused = _run(dns.txt("elsewhere.test"))
    assert refused.status is Status.TEMPERROR and "REFUSED" in refused.error
    # A server that never answers: a timeout, after [dns] timeout, never an exception.
    silent = _run(_resolver(silent_nameserver, timeout=0.5).mx("example.test"))
    assert silent.status is Status.TEMPERROR and "timed out" in silent.error


def test_second_nameserver_answers_when_the_first_is_silent(
    zones: DnsServer, silent_nameserver: str
) -> None:
    dns = _resolver(silent_nameserver, zones.address, timeout=3.0)
    assert _run(dns.a("mx2.example.test")).records == ("127.0.0.6",)


def test_cache_keeps_answers_for_their_ttl(dns_server: DnsServer) -> None:
    """An answer is reused while its TTL lasts and asked again once it has run out."""
    dns_server.zone("example.test", ['long 3600 TXT "one"', 'short 1 TXT "one"'])
    dns = _resolver(dns_server.address)

    async def scenario() -> None:
        assert (await dns.txt("long.example.test")).records == ("one",)
        assert (await dns.txt("short.example.test")).records == ("one",)
        dns_server.zone("example.test", ['long 3600 TXT "two"', 'short 1 TXT "two"'])
        assert (await dns.txt("long.example.test")).records == ("one",)  # cached for 1 h
        for _ in range(200):  # the 1-second TTL runs out: the new record is seen
            if (await dns.txt("short.example.test")).records == ("two",):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the 1-second answer was never asked again")
        assert (await dns.txt("long.example.test")).records == ("one",)

    asyncio.run(scenario())


def test_temporary_failures_are_not_cached(dns_server: DnsServer) -> None:
    dns = _resolver(dns_server.address)

    async def scenario() -> None:
        assert (await dns.txt("later.test")).temporary  # not served yet: REFUSED
        dns_server.zone("later.test", ['@ TXT "here"'])
        assert (await dns.txt("later.test")).records == ("here",)

    asyncio.run(scenario())


def test_dns_section_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "petrel.toml"
    path.write_text('[dns]\nnameservers = ["127.0.0.1:5353", "::1", "[::1]:53"]\ntimeout = "2s"\n')
    config = load_config(path)
    assert config.dns == DnsSection((("127.0.0.1", 5353), ("::1", 53), ("::1", 53)), 2.0)
    path.write_text("")
    assert load_config(path).dns == DnsSection(None, 5.0)  # /etc/resolv.conf, 5 s


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('nameservers = ["ns1.example.test"]', 'dns.nameservers[0]: must be an IP address or "'),
        ('nameservers = ["127.0.0.1:99999"]', "dns.nameservers[0]: port must be a number"),
        ('nameservers = ["[::1]:0"]', "dns.nameservers[0]: port must be a number"),
        ("nameservers = []", "dns.nameservers: must name at least one server"),
        ('nameservers = "127.0.0.1"', "dns.nameservers: must be an array"),
        ('timeout = "soon"', "dns.timeout: must be a duration"),
        ("retries = 3", "dns.retries: unknown key"),
    ],
)
def test_dns_config_errors_name_the_key(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "petrel.toml"
    path.write_text(f"[dns]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(error)


def test_reverse_dns_of_clients_through_the_resolver(tmp_path: Path, dns_server: DnsServer) -> None:
    """``reverse_dns = true``: the EHLO reply and Received field name the client as the
    DNS server says; a PTR whose name does not lead back is "(may be forged)"."""
    dns_server.zone("clients.test", ["good A 127.0.0.1", "forged A 127.0.0.2"])
    dns_server.zone("127.in-addr.arpa", [f"{reverse_name('127.0.0.1')} PTR good.clients.test."])
    server = PetrelServer(tmp_path, f'[dns]\nnameservers = ["{dns_server.address}"]\n')
    server.write_config()
    text = server.config_path.read_text()
    server.config_path.write_text(text.replace("reverse_dns = false", "reverse_dns = true"))
    try:
        server.start()
        client = RawClient(server.connect())
        client.reply()
        ehlo = client.command("EHLO me.test")
        assert ehlo[0] == f"250-{HOSTNAME} Hello me.test [127.0.0.1], pleased to meet you"
        client.command("MAIL FROM:<a@clients.test>")
        client.command(f"RCPT TO:<postmaster@{HOSTNAME}>")
        client.command("DATA")
        client.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        assert client.reply()[0].startswith("250 ")
        client.close()
        [message] = server.wait_for_messages("postmaster")
        assert b"Received: from me.test (good.clients.test [127.0.0.1])" in message

        forged = [f"{reverse_name('127.0.0.1')} PTR forged.clients.test."]
        dns_server.zone("127.in-addr.arpa", forged)
        server.stop()
        server.start()  # a new process: a fresh cache
        client = RawClient(server.connect())
        client.reply()
        ehlo = client.command("EHLO me.test")
        assert ehlo[0].endswith("[127.0.0.1] (may be forged), pleased to meet you")
        client.close()
    finally:
        if server.process is not None:
            server.kill()


def test_unreachable_nameserver_is_a_temporary_error() -> None:
    """A port nobody listens on (ICMP refused): temperror, not an exception."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    found = _run(_resolver(f"127.0.0.1:{port}", timeout=1.0).txt("example.test"))
    assert found.status is Status.TEMPERROR


def test_host_addresses_of_configured_names(zones: DnsServer) -> None:
    """What delivery connects to for a name in the configuration: IPs and localhost
    without a question (even to a server that does not serve them), other names by DNS."""
    dns = _resolver(zones.address)
    for host, expected in [
        ("192.0.2.7", ("192.0.2.7",)),
        ("[2001:db8::7]", ("2001:db8::7",)),
        ("localhost", ("127.0.0.1", "::1")),
        ("LocalHost.", ("127.0.0.1", "::1")),
        ("smtp.localhost", ("127.0.0.1", "::1")),  # RFC 6761 §6.3: names under it too
        ("mx1.example.test", ("127.0.0.5", "::1")),  # only in the test zone
    ]:
        assert _run(dns.host_addresses(host)) == Lookup(Status.OK, expected), host
    assert _run(dns.host_addresses("typo.example.test")).status is Status.NXDOMAIN
    assert _run(dns.host_addresses("s1._domainkey.example.test")).status is Status.NODATA
