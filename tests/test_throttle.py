"""The AUTH throttle over its shared table file, with an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Clock
from petrel.policy.throttle import AuthThrottle, ThrottleTable, client_key

IP = "192.0.2.7"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(path: Path, clock: Clock, max_failures: int = 3, slots: int = 64) -> AuthThrottle:
    return AuthThrottle(ThrottleTable.open(path, slots), max_failures, 600.0, 900.0, clock)


def test_attempts_in_flight_count_against_the_budget(tmp_path: Path, clock: Clock) -> None:
    t = throttle(tmp_path / "t", clock)
    attempts = [t.begin(IP) for _ in range(3)]
    assert all(attempts)
    assert t.begin(IP) is None  # three verifications in flight: no fourth
    assert not t.locked(IP)
    assert t.failure(attempts[0]) is None  # the third failure (counting in flight) locks
    assert t.locked(IP)
    assert t.success(attempts[1]) is False  # a right password verified meanwhile: no 235
    assert t.failure(attempts[2]) is None
    assert t.begin("192.0.2.8") is not None  # other clients are not concerned


def test_delay_doubles_and_success_forgives_only_itself(tmp_path: Path, clock: Clock) -> None:
    t = throttle(tmp_path / "t", clock, max_failures=5)
    first = t.begin(IP)
    assert first is not None and t.failure(first) == 0.25
    second = t.begin(IP)
    assert second is not None and t.failure(second) == 0.5
    good = t.begin(IP)
    assert good is not None and t.success(good) is True
    third = t.begin(IP)
    assert third is not None and t.failure(third) == 1.0  # the two before still count


def test_cancelled_exchanges_count(tmp_path: Path, clock: Clock) -> None:
    t = throttle(tmp_path / "t", clock)
    assert t.cancelled(IP) == 0.25
    assert t.cancelled(IP) == 0.5
    assert t.cancelled(IP) is None and t.locked(IP)


def test_failures_expire_with_the_window_and_the_lock_with_lockout(
    tmp_path: Path, clock: Clock
) -> None:
    t = throttle(tmp_path / "t", clock)
    t.cancelled(IP)
    t.cancelled(IP)
    clock.now += 600.0  # a whole window later the two are forgotten
    assert t.cancelled(IP) == 0.25
    t.cancelled(IP)
    assert t.cancelled(IP) is None
    clock.now += 899.0
    assert t.locked(IP)
    clock.now += 1.0
    assert not t.locked(IP) and t.begin(IP) is not None


def test_a_clock_stepped_back_cannot_prolong_the_lock(tmp_path: Path, clock: Clock) -> None:
    t = throttle(tmp_path / "t", clock)
    for _ in range(3):
        t.cancelled(IP)
    clock.now -= 86400.0  # a day back: the stored end lies far ahead
    assert t.locked(IP)
    clock.now += 900.0
    assert not t.locked(IP)


def test_processes_share_one_file_and_it_survives_a_reopen(tmp_path: Path, clock: Clock) -> None:
    """Two opens of the file stand for two workers, a reopen for a restart."""
    path = tmp_path / "t"
    one, two = throttle(path, clock), throttle(path, clock)
    one.cancelled(IP)
    two.cancelled(IP)
    assert one.cancelled(IP) is None and two.locked(IP)
    one.table.close()
    two.table.close()
    assert throttle(path, clock).locked(IP)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_damaged_file_is_made_anew(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "t"
    path.write_bytes(b"not a table")
    t = throttle(path, clock)
    assert not t.locked(IP) and t.begin(IP) is not None


def test_the_table_is_bounded_and_keeps_lock_outs_longest(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "t"
    t = throttle(path, clock, slots=16)
    size = path.stat().st_size
    for _ in range(3):
        t.cancelled(IP)
    for n in range(2000):  # many other clients, one failure each
        clock.now += 0.01
        t.cancelled(f"198.51.{n // 250}.{n % 250}")
    assert path.stat().st_size == size
    assert t.locked(IP)


def test_client_key_groups_an_ipv6_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == client_key(IP) == IP
