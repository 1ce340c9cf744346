"""Failed-AUTH bookkeeping per client IP: a growing delay, then a cool-down.

Password guessing is slowed twice: each failure is answered only after a delay that
doubles with the failures in the window (a guesser's rate collapses, a mistyped
password costs a person a fraction of a second), and once ``max_failures`` are reached
the IP gets ``421 4.7.0`` for ``lockout`` seconds. Memory is bounded by pruning.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["AuthThrottle"]

_MAX_DELAY = 5.0
_MAX_TRACKED = 100_000


class AuthThrottle:
    def __init__(
        self,
        max_failures: int,
        window: float,
        lockout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, ip: str) -> bool:
        until = self._locked_until.get(ip)
        if until is None:
            return False
        if self.clock() >= until:
            del self._locked_until[ip]
            return False
        return True

    def failure(self, ip: str) -> float:
        """Record a failure; returns the delay before answering it (0 once locked out)."""
        now = self.clock()
        recent = [t for t in self._failures.get(ip, ()) if now - t < self.window]
        recent.append(now)
        if len(recent) >= self.max_failures:
            self._failures.pop(ip, None)
            self._locked_until[ip] = now + self.lockout
            return 0.0
        self._failures[ip] = recent
        if len(self._failures) > _MAX_TRACKED:
            self._prune(now)
        return min(0.25 * 2 ** (len(recent) - 1), _MAX_DELAY)

    def success(self, ip: str) -> None:
        self._failures.pop(ip, None)

    def _prune(self, now: float) -> None:
        for ip in [ip for ip, ts in self._failures.items() if now - ts[-1] >= self.window]:
            del self._failures[ip]
        for ip in [ip for ip, until in self._locked_until.items() if now >= until]:
            del self._locked_until[ip]
