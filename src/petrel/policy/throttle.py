"""Failed-AUTH bookkeeping per client IP: a growing delay, then a cool-down.

Password guessing is slowed twice: each failure is answered only after a delay that
doubles with the failures in the window (a guesser's rate collapses, a mistyped
password costs a person a fraction of a second), and once ``max_failures`` are reached
the IP gets ``421 4.7.0`` for ``lockout`` seconds.

The lock is asked before every verification, not only at connect: a connection opened
before the lock-out must not get to try the right password. An attempt counts as a
failure from the moment it begins (``begin``) until it succeeds, so simultaneous guesses
cannot overtake the count: at most ``max_failures`` of them are ever verified. A success
forgives only itself, never the other failures of its IP (they may be someone else's,
behind the same NAT, or the guesser's own account used to wipe the slate).

The counts live in a small fixed-size table in a file (``ThrottleTable``) that every
worker process maps, so ``workers = N`` does not multiply the budget, and a worker's
restart (or the server's) forgets nothing. Each IP's failures are counted in sixteen
buckets spanning ``failure_window``: a failure counts for between 15/16 of the window
and the whole window. Timestamps are wall-clock seconds, the one clock processes share;
a clock stepped back cannot make a lock-out last longer than ``lockout``.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUCKETS",
    "Attempt",
    "AuthThrottle",
    "Slot",
    "ThrottleTable",
    "advance",
    "client_key",
    "count",
]

_MAX_DELAY = 5.0
BUCKETS = 16

_MAGIC = b"PTRLTHR1"
_HEADER = struct.Struct("<8sI16s")  # magic, slot count, the key of the IP hash
_HEADER_SIZE = 64
# An IP's slot: its hash, locked until (wall clock), the newest bucket's number, counts.
_SLOT = struct.Struct(f"<16sdq{BUCKETS}H")
_MAX_COUNT = 0xFFFF
_WAYS = 8  # slots an IP may occupy (one group): the least useful is reused when full
_SLOTS = 8192  # 512 KiB: the IPs tracked at once


@dataclass(slots=True)
class Slot:
    """One IP's record, read from the table and written back after the change."""

    locked_until: float
    base: int  # the number of the newest bucket (time // bucket width)
    counts: list[int]


@dataclass(frozen=True, slots=True)
class Attempt:
    """An AUTH attempt in progress: counted as a failure in ``bucket`` until it succeeds."""

    key: bytes
    bucket: int


def client_key(ip: str) -> str:
    """What the throttle counts by: the IPv4 address, or the IPv6 /64 (one customer's)."""
    if ":" not in ip:  # IPv4, asked at every connection: no parsing
        return ip
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return ip


class ThrottleTable:
    """A fixed-size table of ``Slot``s in a file, shared by processes through mmap.

    Every change is a read-modify-write under ``fcntl.lockf`` on the file: the critical
    section is a few microseconds, so blocking the event loop for it is fine, and the
    kernel drops the lock of a process that dies. The file is allocated in full when
    made (a full disk fails at start-up, not as SIGBUS later) and never shrunk while
    mapped. Keys are keyed hashes of the IP, the key stored in the header, so nobody can
    aim at another IP's group.
    """

    def __init__(self, fd: int | None, slots: int, key: bytes) -> None:
        self._fd = fd  # None: this process's own table in memory (no file could be made)
        self._slots = slots
        self._key = key
        self._depth = 0  # nested ``locked`` blocks: the file lock is taken by the outermost
        self._map = mmap.mmap(-1 if fd is None else fd, _HEADER_SIZE + slots * _SLOT.size)

    @classmethod
    def in_memory(cls, slots: int = _SLOTS) -> ThrottleTable:
        """A table for this process alone: the fallback when the file cannot be made
        (a full disk must not keep the server from starting)."""
        return cls(None, slots, secrets.token_bytes(16))

    @classmethod
    def open(cls, path: Path, slots: int = _SLOTS) -> ThrottleTable:
        """Open the table at ``path``, made (0600) or repaired on first use."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        try:
            size = _HEADER_SIZE + slots * _SLOT.size
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                header = os.pread(fd, _HEADER.size, 0).ljust(_HEADER.size, b"\0")
                magic, count, key = _HEADER.unpack(header)
                if magic != _MAGIC or count != slots or os.fstat(fd).st_size < size:
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError as exc:  # ENOSPC names no file
                        raise OSError(exc.errno, exc.strerror, str(path)) from None
                    os.pwrite(fd, bytes(size - _HEADER_SIZE), _HEADER_SIZE)
                    key = secrets.token_bytes(16)
                    os.pwrite(fd, _HEADER.pack(_MAGIC, slots, key), 0)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            return cls(fd, slots, key)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)

    def hash(self, client: str) -> bytes:
        return hashlib.blake2b(client.encode(), key=self._key, digest_size=16).digest()

    @contextmanager
    def slot(self, key: bytes, now: float) -> Iterator[Slot]:
        """The slot of ``key``, written back when the block ends.

        An absent key gets a fresh slot, taken (from the least useful of its group) only
        if something was recorded in it: asking about a stranger writes nothing.
        """
        group = int.from_bytes(key[:8], "little") % (self._slots // _WAYS) * _WAYS
        with self.locked():
            offset, found, slot = self._find(key, group, now)
            yield slot
            if found or slot.locked_until > 0 or any(slot.counts):
                _SLOT.pack_into(self._map, offset, key, slot.locked_until, slot.base, *slot.counts)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file lock for several ``slot`` blocks: one lockf round trip for all.

        The ``slot`` blocks inside run one after the other, each written back before the
        next looks (two keys of one group must not both take the same free slot).
        """
        self._depth += 1
        if self._depth == 1 and self._fd is not None:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._depth -= 1
                raise
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def locked_until(self, key: bytes) -> float:
        """The key's lock-out end (0.0: none), read without taking the file lock.

        For the check at every connection, which must stay cheap: a read racing a write
        may see the old value, which the checks before each verification then correct.
        """
        group = int.from_bytes(key[:8], "little") % (self._slots // _WAYS) * _WAYS
        for index in range(group, group + _WAYS):
            offset = _HEADER_SIZE + index * _SLOT.size
            stored, locked_until, *_ = _SLOT.unpack_from(self._map, offset)
            if stored == key:
                return float(locked_until)
        return 0.0

    def _find(self, key: bytes, group: int, now: float) -> tuple[int, bool, Slot]:
        """(offset, found, slot): the key's own slot, or the one to reuse for it."""
        victim: tuple[bool, int, int] | None = None  # (locked, recency, offset): lowest goes
        for index in range(group, group + _WAYS):
            offset = _HEADER_SIZE + index * _SLOT.size
            stored, locked_until, base, *counts = _SLOT.unpack_from(self._map, offset)
            if stored == key:
                return offset, True, Slot(locked_until, base, counts)
            locked = locked_until > now
            recency = base if locked or any(counts) else -1
            if victim is None or (locked, recency) < victim[:2]:
                victim = (locked, recency, offset)
        assert victim is not None
        return victim[2], False, Slot(0.0, 0, [0] * BUCKETS)


def advance(slot: Slot, bucket: int) -> None:
    """Bring the slot's buckets up to ``bucket``: those that left the window are emptied."""
    if bucket > slot.base:
        for number in range(max(slot.base + 1, bucket - BUCKETS + 1), bucket + 1):
            slot.counts[number % BUCKETS] = 0
        slot.base = bucket


def count(slot: Slot) -> None:
    """One more failure in the newest bucket."""
    index = slot.base % BUCKETS
    slot.counts[index] = min(slot.counts[index] + 1, _MAX_COUNT)


class AuthThrottle:
    """The rules over a ``ThrottleTable``: budget, delay, lock-out."""

    def __init__(
        self,
        table: ThrottleTable,
        max_failures: int,
        window: float,
        lockout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self._width = window / BUCKETS

    def locked(self, ip: str) -> bool:
        """Is the IP locked out? (Asked at connect: no file lock, see `locked_until`.)"""
        now = self.clock()
        key = self.table.hash(client_key(ip))
        until = self.table.locked_until(key)
        if until > now + self.lockout:  # the clock went back: store the bounded end
            with self._slot(key, now) as slot:
                until = slot.locked_until
        return until > now

    def begin(self, ip: str) -> Attempt | None:
        """Start an attempt, counted as a failure until it succeeds.

        None when the IP is locked out or its budget is taken by failures and attempts
        in flight: refuse with the lock-out reply, without verifying anything.
        """
        now = self.clock()
        key = self.table.hash(client_key(ip))
        with self._slot(key, now) as slot:
            if slot.locked_until > now or sum(slot.counts) >= self.max_failures:
                return None
            count(slot)
            return Attempt(key, slot.base)

    def failure(self, attempt: Attempt) -> float | None:
        """The attempt failed: the delay before answering it, None once locked out."""
        return self._failed(attempt.key, counted=True)

    def cancelled(self, ip: str) -> float | None:
        """An exchange given up before any verification: a failure all the same."""
        return self._failed(self.table.hash(client_key(ip)), counted=False)

    def success(self, attempt: Attempt) -> bool:
        """The attempt succeeded: forgive it; False when the IP got locked meanwhile."""
        now = self.clock()
        with self._slot(attempt.key, now) as slot:
            if slot.locked_until > now:
                return False
            index = attempt.bucket % BUCKETS
            if slot.base - attempt.bucket < BUCKETS and slot.counts[index] > 0:
                slot.counts[index] -= 1
            return True

    def _failed(self, key: bytes, counted: bool) -> float | None:
        """Lock the IP out at ``max_failures``; ``counted``: the attempt already is."""
        now = self.clock()
        with self._slot(key, now) as slot:
            if slot.locked_until > now:
                return None
            if not counted:
                count(slot)
            failures = sum(slot.counts)
            if failures >= self.max_failures:
                slot.locked_until = now + self.lockout
                slot.counts = [0] * BUCKETS
                return None
        return min(0.25 * 2.0 ** (failures - 1), _MAX_DELAY)

    @contextmanager
    def _slot(self, key: bytes, now: float) -> Iterator[Slot]:
        """The IP's slot brought up to ``now``: old buckets emptied, the lock bounded."""
        bucket = int(now // self._width)
        with self.table.slot(key, now) as slot:
            advance(slot, bucket)
            slot.locked_until = min(slot.locked_until, now + self.lockout)
            yield slot
