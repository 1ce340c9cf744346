"""Issue 16 items 4-7 without a server: the [antispam] keys, greylisting's rules over its
shared table (with an injected clock), the refusal counters, DNSBL names, HELO checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Clock
from petrel.config import ConfigError, DnsblSite, load_config
from petrel.policy.antispam import Antispam, query_name
from petrel.policy.greylist import RETRY_WINDOW, WHITELIST_PERIOD, Greylist, network
from petrel.policy.refusals import REASONS, Refusals
from petrel.policy.throttle import ThrottleTable

DELAY = 300.0


def _config(tmp_path: Path, text: str) -> object:
    path = tmp_path / "petrel.toml"
    path.write_text(text)
    return load_config(path)


# -- [antispam] -----------------------------------------------------------------------


def test_dnsbl_sites_take_postscreen_syntax(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        '[antispam]\ndnsbl = ["zen.example", "bl.example=127.0.0.[2..11]*3", '
        '"list.dnswl.example=127.0.[0..255].[1;3]*-2"]\ndnsbl_threshold = 3\n'
        'greet_delay = "6s"\n',
    )
    antispam = config.antispam  # type: ignore[attr-defined]
    zen, bl, wl = antispam.dnsbl
    assert zen == DnsblSite("zen.example", None, 1) and zen.matches("127.0.0.99")
    assert bl.weight == 3 and bl.matches("127.0.0.11") and not bl.matches("127.0.0.12")
    assert wl.weight == -2 and wl.matches("127.0.200.3") and not wl.matches("127.0.200.2")
    assert antispam.dnsbl_threshold == 3 and antispam.greet_delay == 6.0
    assert antispam.pregreet == "reject" and not antispam.greylist  # the defaults


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('dnsbl = ["bl.example=127.0.0"]', "antispam.dnsbl[0]: the answer filter needs four"),
        ('dnsbl = ["bl.example=127.0.0.[9..3]"]', "antispam.dnsbl[0]: not an octet"),
        ('dnsbl = ["bl example"]', "antispam.dnsbl[0]: not a valid domain name"),
        ('dnsbl = ["bl.example*x"]', "antispam.dnsbl[0]: expected"),
        ('pregreet = "drop"', "antispam.pregreet: must be one of reject, off"),
        ('greet_delay = "10m"', "antispam.greet_delay: must be at most 5m"),
        ('greylist_delay = "0s"', "antispam.greylist_delay: must be a positive duration"),
        ("reject_non_fqdn_helo = 1", "antispam.reject_non_fqdn_helo: must be true or false"),
        ("greylisting = true", "antispam.greylisting: unknown key"),
    ],
)
def test_bad_antispam_keys_are_named(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config(tmp_path, f"[antispam]\n{line}\n")


def test_dnsbl_query_names() -> None:
    assert query_name("192.0.2.7", "bl.example") == "7.2.0.192.bl.example"
    assert query_name("::ffff:192.0.2.7", "bl.example") == "7.2.0.192.bl.example"
    assert query_name("2001:db8::1", "bl.example") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
    )
    assert query_name("not an address", "bl.example") is None


def test_non_fqdn_helo_names(tmp_path: Path) -> None:
    config = _config(tmp_path, "[antispam]\nreject_non_fqdn_helo = true\n")
    antispam = Antispam(config.antispam, resolver=None)  # type: ignore[arg-type, attr-defined]
    refused = antispam.check_helo("localhost")
    assert refused is not None and str(refused) == (
        "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"
    )
    assert antispam.check_helo(".local") is not None and antispam.check_helo("a..b") is not None
    for name in ("mail.example.test", "mail.example.test.", "[192.0.2.7]", "[IPv6:2001:db8::1]"):
        assert antispam.check_helo(name) is None, name


# -- greylisting ----------------------------------------------------------------------


def _greylist(path: Path, clock: Clock) -> Greylist:
    return Greylist(ThrottleTable.open(path, 256), DELAY, clock)


def test_a_new_triplet_waits_the_delay_then_passes_and_whitelists_its_network(
    tmp_path: Path,
) -> None:
    clock = Clock()
    grey = _greylist(tmp_path / "greylist", clock)
    first = grey.check("192.0.2.7", "a@sender.test", "rcpt@mx.test")
    assert first is not None and first.code == 450 and first.status == "4.7.1"
    assert "Greylisted" in str(first)
    clock.now += DELAY - 2
    assert grey.check("192.0.2.7", "a@sender.test", "rcpt@mx.test") is not None  # too early
    # Another triplet of the same client is greylisted on its own.
    assert grey.check("192.0.2.7", "b@sender.test", "rcpt@mx.test") is not None
    clock.now += 2
    assert grey.check("192.0.2.7", "a@sender.test", "rcpt@mx.test") is None
    # The /24 is whitelisted now: a neighbour, another sender and recipient pass at once.
    assert grey.check("192.0.2.200", "c@other.test", "x@mx.test") is None
    assert grey.check("198.51.100.7", "a@sender.test", "rcpt@mx.test") is not None  # not it
    clock.now += WHITELIST_PERIOD + 1  # whitelisting ends; the triplet is forgotten too
    assert grey.check("192.0.2.200", "c@other.test", "x@mx.test") is not None


def test_a_triplet_not_retried_in_time_is_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    grey = _greylist(tmp_path / "greylist", clock)
    assert grey.check("192.0.2.7", "a@sender.test", "rcpt@mx.test") is not None
    clock.now += RETRY_WINDOW + 1
    assert grey.check("192.0.2.7", "a@sender.test", "rcpt@mx.test") is not None  # new again
    clock.now += DELAY
    assert grey.check("192.0.2.7", "a@sender.test", "rcpt@mx.test") is None


def test_ipv6_clients_are_greylisted_by_their_64(tmp_path: Path) -> None:
    clock = Clock()
    grey = _greylist(tmp_path / "greylist", clock)
    assert network("2001:db8:1:2::7") == "2001:db8:1:2::/64"
    assert network("192.0.2.7") == "192.0.2.0/24"
    assert grey.check("2001:db8:1:2::7", "a@s.test", "r@mx.test") is not None
    clock.now += DELAY
    assert grey.check("2001:db8:1:2:ffff::1", "a@s.test", "r@mx.test") is None  # same /64


def test_state_is_shared_by_processes_and_kept_over_a_restart(tmp_path: Path) -> None:
    """Two opens of the file are two workers, or one server before and after a restart."""
    clock = Clock()
    one = _greylist(tmp_path / "greylist", clock)
    assert one.check("192.0.2.7", "a@sender.test", "rcpt@mx.test") is not None
    one.table.close()
    clock.now += DELAY
    two = _greylist(tmp_path / "greylist", clock)
    assert two.check("192.0.2.7", "a@sender.test", "rcpt@mx.test") is None


def test_the_table_stays_bounded_and_old_entries_make_room(tmp_path: Path) -> None:
    clock = Clock()
    grey = _greylist(tmp_path / "greylist", clock)
    size = (tmp_path / "greylist").stat().st_size
    for n in range(5000):  # far more triplets than the 256 slots
        grey.check(f"10.{n // 256}.{n % 256}.1", "a@s.test", "r@mx.test")
        clock.now += 1
    assert (tmp_path / "greylist").stat().st_size == size
    # The newest triplets are still known: they pass once their delay is over.
    clock.now += DELAY
    assert grey.check("10.19.135.1", "a@s.test", "r@mx.test") is None  # n = 4999


# -- refusal counters -----------------------------------------------------------------


def test_refusals_are_counted_by_reason_across_processes_and_restarts(tmp_path: Path) -> None:
    one = Refusals.open(tmp_path / "refusals")
    two = Refusals.open(tmp_path / "refusals")  # another worker
    one.count("dnsbl")
    two.count("dnsbl")
    two.count("greylist")
    assert one.snapshot()["dnsbl"] == 2 and one.snapshot()["greylist"] == 1
    assert set(one.snapshot()) == set(REASONS)
    one.close()
    two.close()
    again = Refusals.open(tmp_path / "refusals")
    assert again.snapshot()["dnsbl"] == 2 and again.snapshot()["pregreet"] == 0
