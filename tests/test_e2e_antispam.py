"""Issue 16 items 4-7 on a real ``petrel serve``: DNSBL/DNSWL scoring, pregreet with
greet_delay, greylisting over a restart, the sender checks and the refusal counts.

DNS comes from the Knot server of the ``dns_server`` fixture on loopback; clients come
from 127.0.0.2 and 127.0.0.3 (Linux routes 127/8 to lo), taken out of
``limits.exempt_networks``; 127.0.0.1 stays exempt.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until
from dns_server import DnsServer, txt
from petrel.policy.refusals import Refusals

RCPT = f"postmaster@{HOSTNAME}"
LIMITS = '[limits]\nexempt_networks = ["127.0.0.1/32", "::1/128"]\n'
LISTED_TXT = "Listed by bl.test, see https://bl.test/query?ip=127.0.0.2"


def _dns(address: str, timeout: str = "2s") -> str:
    return f'[dns]\nnameservers = ["{address}"]\ntimeout = "{timeout}"\n'


def _client(server: PetrelServer, source: str) -> RawClient:
    sock = socket.create_connection(
        (server.host, server.port), timeout=15, source_address=(source, 0)
    )
    return RawClient(sock)


def _session(server: PetrelServer, source: str, helo: str = "client.example.test") -> RawClient:
    client = _client(server, source)
    assert client.reply()[-1].startswith("220 ")
    assert client.command(f"EHLO {helo}")[0].startswith("250")
    return client


def _mail(client: RawClient, sender: str = "a@client.test", rcpt: str = RCPT) -> list[str]:
    """One transaction: the MAIL, RCPT and final replies (as far as it got)."""
    replies = [client.command(f"MAIL FROM:<{sender}>")[0]]
    if not replies[-1].startswith("250"):
        return replies
    replies.append(client.command(f"RCPT TO:<{rcpt}>")[0])
    if not replies[-1].startswith("250"):
        client.command("RSET")
        return replies
    assert client.command("DATA")[0].startswith("354")
    replies.append(client.command("Subject: hi\r\n\r\nok\r\n.")[0])
    return replies


def _refusals(server: PetrelServer) -> dict[str, int]:
    counts = Refusals.open(server.data_dir / "refusals")
    try:
        return dict(counts.snapshot())
    finally:
        counts.close()


def test_dnsbl_listed_client_refused_with_the_txt_dnswl_passed_exempt_not_asked(
    petrel_factory: Callable[..., PetrelServer], dns_server: DnsServer
) -> None:
    dns_server.zone(
        "bl.test",
        [
            "2.0.0.127 A 127.0.0.2",
            f"2.0.0.127 TXT {txt(LISTED_TXT)}",
            "3.0.0.127 A 127.0.0.2",  # listed, but whitelisted more strongly
            "1.0.0.127 A 127.0.0.2",  # the exempt client: never asked
        ],
    )
    dns_server.zone("wl.test", ["3.0.0.127 A 127.0.10.2"])
    server = petrel_factory(
        LIMITS
        + _dns(dns_server.address)
        + '[antispam]\ndnsbl = ["bl.test=127.0.0.[2..11]", '
        '"wl.test=127.0.[0..255].[1..3]*-2"]\n'
    )
    listed = _client(server, "127.0.0.2")
    assert listed.reply() == [
        f"554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test; {LISTED_TXT}"
    ]
    assert listed.at_eof()
    listed.close()
    whitelisted = _session(server, "127.0.0.3")
    assert _mail(whitelisted)[-1].startswith("250 2.0.0")
    whitelisted.close()
    exempt = _session(server, "127.0.0.1")
    assert _mail(exempt)[-1].startswith("250 2.0.0")
    exempt.close()
    log = server.log_text()
    assert log.count("reason=dnsbl") == 1 and "zone=bl.test" in log
    assert _refusals(server)["dnsbl"] == 1


def test_an_ipv6_client_is_looked_up_by_its_nibbles(
    petrel_factory: Callable[..., PetrelServer], dns_server: DnsServer
) -> None:
    nibbles = ".".join("0" * 31 + "1")[::-1]  # ::1, reversed nibbles
    dns_server.zone("bl.test", [f"{nibbles} A 127.0.0.4"])
    server = petrel_factory(
        '[limits]\nexempt_networks = ["127.0.0.1/32"]\n'
        + _dns(dns_server.address)
        + '[antispam]\ndnsbl = ["bl.test=127.0.0.4"]\n'
        + '[[listener]]\naddress = "[::1]:0"\nmode = "smtp"\n'
    )
    found = re.search(r"event=listening address=\[::1\]:(\d+) mode=smtp", server.log_text())
    assert found is not None
    client = RawClient(socket.create_connection(("::1", int(found[1])), timeout=15))
    assert client.reply() == [
        "554 5.7.1 Service unavailable; client [::1] blocked using bl.test"  # no TXT
    ]
    client.close()


def test_a_dnsbl_that_does_not_answer_never_blocks_mail(
    petrel_factory: Callable[..., PetrelServer], silent_nameserver: str
) -> None:
    server = petrel_factory(
        LIMITS + _dns(silent_nameserver, "1s") + '[antispam]\ndnsbl = ["bl.test"]\n'
    )
    client = _session(server, "127.0.0.2")  # greeted once the lookup gave up
    assert _mail(client)[-1].startswith("250 2.0.0")
    client.close()
    assert _refusals(server)["dnsbl"] == 0


def test_pregreet_refused_polite_client_served_counts_shared_by_workers(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(
        LIMITS + '[antispam]\ngreet_delay = "4s"\n', server_config="workers = 2"
    )
    wait_until(lambda: server.log_text().count("event=worker-ready") >= 2, what="workers")
    polite = _client(server, "127.0.0.3")  # connects first, waits for the 220
    talkers = 4
    for _ in range(talkers):
        talker = _client(server, "127.0.0.2")
        talker.send(b"EHLO spambot.test\r\n")  # well before the 4 s are over
        assert talker.reply() == ["521 5.5.1 Protocol error"]
        assert talker.at_eof()
        talker.close()
    assert polite.reply()[-1].startswith("220 ")
    assert polite.command("EHLO polite.example.test")[0].startswith("250")
    assert _mail(polite)[-1].startswith("250 2.0.0")
    polite.close()
    # Exempt: no delay, so nothing it sends is early.
    exempt = _client(server, "127.0.0.1")
    exempt.send(b"EHLO app.test\r\n")
    assert exempt.reply()[0].startswith("220 ")
    assert exempt.reply()[0].startswith("250")
    exempt.close()
    log = server.log_text()
    assert log.count("reason=pregreet") == talkers  # one line per refusal
    assert 'sent="EHLO spambot.test"' in log
    assert _refusals(server)["pregreet"] == talkers  # both workers' refusals in one count


def test_with_pregreet_off_early_commands_are_answered_after_the_220(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(LIMITS + '[antispam]\ngreet_delay = "1s"\npregreet = "off"\n')
    early = _client(server, "127.0.0.2")
    early.send(b"EHLO early.example.test\r\n")
    assert early.reply()[0].startswith("220 ")
    assert early.reply()[0].startswith("250")
    assert _mail(early)[-1].startswith("250 2.0.0")
    early.close()
    assert "reason=pregreet" not in server.log_text()


def test_greylisting_450_then_pass_after_the_delay_across_a_restart(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    delay = 2.0
    server = petrel_factory(LIMITS + '[antispam]\ngreylist = true\ngreylist_delay = "2s"\n')
    client = _session(server, "127.0.0.2")
    first = _mail(client, "news@sender.test")
    refused_at = time.time()
    assert first[1].startswith("450 4.7.1 ") and "Greylisted" in first[1], first
    client.close()
    assert server.stop() == 0
    server.start()
    # The triplet's first sighting survived the restart: once the delay has passed since
    # then (plus the second the table rounds up), the first retry gets through.
    wait_until(lambda: time.time() > refused_at + delay + 1.5, what="the greylist delay")
    attempts: list[list[str]] = []
    for _ in range(20):  # a bounded retry, as a sending MTA's queue does
        client = _session(server, "127.0.0.2")
        attempts.append(_mail(client, "news@sender.test"))
        client.close()
        if attempts[-1][-1].startswith("250 2.0.0"):
            break
        time.sleep(1)
    assert attempts[0][-1].startswith("250 2.0.0"), attempts
    # The client's /24 is whitelisted now: a neighbour with another sender passes at once.
    neighbour = _session(server, "127.0.0.3")
    assert _mail(neighbour, "other@elsewhere.test")[-1].startswith("250 2.0.0")
    neighbour.close()
    exempt = _session(server, "127.0.0.1")
    assert _mail(exempt, "fresh@new.test")[-1].startswith("250 2.0.0")
    exempt.close()
    assert server.log_text().count("reason=greylist") == 1
    assert _refusals(server)["greylist"] == 1


def test_unknown_sender_domains_and_non_fqdn_helo_are_refused(
    petrel_factory: Callable[..., PetrelServer], dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.zone(
        "sender.test",
        [
            "mx MX 10 mail.sender.test.",
            "mail A 127.0.0.1",
            "aonly A 192.0.2.1",
            "v6only AAAA 2001:db8::1",
            'txtonly TXT "no mail here"',
            "nullmx MX 0 .",
        ],
    )
    server = petrel_factory(
        LIMITS
        + _dns(dns_server.address)
        + "[antispam]\nreject_unknown_sender_domain = true\nreject_non_fqdn_helo = true\n"
    )
    client = _session(server, "127.0.0.2")
    for domain in ("mx.sender.test", "aonly.sender.test", "v6only.sender.test"):
        assert _mail(client, f"a@{domain}")[-1].startswith("250 2.0.0"), domain
    assert _mail(client, "")[-1].startswith("250 2.0.0")  # bounces are never refused
    for domain in ("nowhere.sender.test", "txtonly.sender.test"):
        assert _mail(client, f"a@{domain}") == [
            f"550 5.1.8 <a@{domain}>: Sender address rejected: Domain not found"
        ]
    assert _mail(client, "a@nullmx.sender.test")[0].startswith("550 5.7.27 ")
    # A domain the DNS server will not answer for (REFUSED): try again later.
    assert _mail(client, "a@unserved.example") == [
        "450 4.1.8 <a@unserved.example>: Sender address rejected: Domain not found"
    ]
    client.close()
    bare = _session(server, "127.0.0.2", helo="localhost")
    assert _mail(bare, "a@mx.sender.test") == [
        "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"
    ]
    bare.close()
    exempt = _session(server, "127.0.0.1", helo="localhost")
    assert _mail(exempt, "a@nowhere.sender.test")[-1].startswith("250 2.0.0")
    exempt.close()
    counts = _refusals(server)
    assert counts["unknown-sender-domain"] == 4 and counts["non-fqdn-helo"] == 1
    log = server.log_text()
    assert log.count("reason=unknown-sender-domain") == 4
    assert log.count("reason=non-fqdn-helo") == 1
