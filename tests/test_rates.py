"""The per-client and per-user rates over their shared table, with an injected clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import Clock
from petrel.config import Config, ConfigError, load_config
from petrel.policy.rates import Rates
from petrel.policy.refusals import Refusals
from petrel.policy.throttle import ThrottleTable

IP = "192.0.2.7"


def rates(path: Path, clock: Clock, **limits: int) -> Rates:
    config = Config.default()
    section = dataclasses.replace(config.limits, **limits)
    return Rates(ThrottleTable.open(path, 64), section, "mx.test", Refusals.in_memory(), clock)


def test_the_eleventh_message_in_a_minute_is_refused_and_others_are_unaffected(
    tmp_path: Path,
) -> None:
    clock = Clock()
    r = rates(tmp_path / "rates", clock, message_rate=10)
    assert all(r.message(IP, None) is None for _ in range(10))
    refused = r.message(IP, None)
    assert refused is not None and str(refused) == f"450 4.7.1 Error: too much mail from {IP}"
    assert r.message("192.0.2.8", None) is None
    assert r.message(None, None) is None  # exempt, not authenticated: nothing to count
    clock.now += 61  # the window has passed
    assert r.message(IP, None) is None


def test_counts_are_shared_through_the_file(tmp_path: Path) -> None:
    clock = Clock()
    one = rates(tmp_path / "rates", clock, connection_rate=3)
    two = rates(tmp_path / "rates", clock, connection_rate=3)
    assert one.connection(IP) is None and two.connection(IP) is None
    assert one.connection(IP) is None
    refused = two.connection(IP)
    assert refused is not None
    assert str(refused) == f"421 4.7.0 mx.test Error: too many connections from {IP}"


def test_an_ipv6_client_is_counted_by_its_64(tmp_path: Path) -> None:
    r = rates(tmp_path / "rates", Clock(), recipient_rate=2)
    assert r.recipient("2001:db8::1") is None and r.recipient("2001:db8::2") is None
    refused = r.recipient("2001:db8::ffff")
    assert refused is not None and str(refused).startswith("450 4.7.1 Error: too many recipients")
    assert r.recipient("2001:db8:0:1::1") is None  # another /64


def test_the_user_rate_applies_to_exempt_clients_and_refuses_without_counting(
    tmp_path: Path,
) -> None:
    clock = Clock()
    r = rates(tmp_path / "rates", clock, message_rate=5, user_message_rate=3)
    for _ in range(3):
        assert r.message(None, "Willie@mx.test") is None
    refused = r.message(None, "willie@mx.test")
    assert refused is not None and "too much mail from willie@mx.test" in str(refused)
    # Refused by the user rate: the client's own count was not taken.
    assert all(r.message(IP, None) is None for _ in range(5))
    clock.now += 1800
    assert r.message(None, "willie@mx.test") is not None  # per hour
    clock.now += 1900
    assert r.message(None, "willie@mx.test") is None


def test_zero_means_unlimited(tmp_path: Path) -> None:
    r = rates(tmp_path / "rates", Clock(), connection_rate=0, message_rate=0, recipient_rate=0)
    assert all(r.connection(IP) is None for _ in range(100))
    assert all(r.recipient(IP) is None for _ in range(100))


def test_an_in_memory_table_works_alone() -> None:
    config = dataclasses.replace(Config.default().limits, message_rate=1)
    r = Rates(ThrottleTable.in_memory(64), config, "mx.test", Refusals.in_memory(), Clock())
    assert r.message(IP, None) is None
    assert r.message(IP, None) is not None


@pytest.mark.parametrize("key", ["connection_rate", "user_message_rate"])
@pytest.mark.parametrize("value", ["-1", "1.5", "true", '"10"', "2000000"])
def test_rate_keys_are_validated(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "petrel.toml"
    path.write_text(f"[limits]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"^limits\.{key}: must be an integer from 0"):
        load_config(path)
