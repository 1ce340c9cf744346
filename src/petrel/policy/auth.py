"""AUTH credentials: is this the user's password, may this client try again.

The session runs the SASL exchange (the core checks SCRAM proofs); everything that
decides is here: who a SASL identity is (`Policy.login_user`), the password check
(argon2 in a thread; an unknown user is checked against a decoy hash of the same cost,
and gets stable decoy SCRAM keys, so AUTH does not tell who exists), the authzid rule
(RFC 4616: acting for someone else is refused), and the throttle (`AuthThrottle`).

The throttle is asked before every verification, not only at connect: an IP that is
locked out, or whose budget is taken by failures and attempts in flight, gets
`LockedOut` without anything being verified, and one locked while its attempt was
verified gets `LockedOut` in place of any answer that would tell a right password from
a wrong one. Each check returns a `Verdict`; the session turns it into 235, 535 (after
the delay) or the lock-out 421, and logs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from . import Policy
from .decoy import ScramDecoys, decoy_password_hash
from .throttle import Attempt, AuthThrottle
from .users import ScramSecret, User, verify_password

__all__ = ["Authenticator", "Granted", "LockedOut", "Refused", "Verdict"]


@dataclass(frozen=True, slots=True)
class Granted:
    """The credentials are right: the client is ``user`` (an address) from now on."""

    user: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Wrong credentials (or an exchange given up): answer after ``delay`` seconds.

    ``delay`` is None when this failure locked the IP out: answer with the lock-out.
    """

    delay: float | None


@dataclass(frozen=True, slots=True)
class LockedOut:
    """The IP is locked out (or its budget is used up): nothing was, or may be, told."""


Verdict: TypeAlias = Granted | Refused | LockedOut


class Authenticator:
    """Password checks and the AUTH throttle, for the sessions of one process."""

    def __init__(
        self,
        policy: Policy,
        throttle: AuthThrottle,
        decoys: ScramDecoys,
        verify: Callable[[str, str], bool] = verify_password,
    ) -> None:
        self.policy = policy
        self.throttle = throttle
        self.decoys = decoys
        self._verify = verify  # (hash, password) -> bool; slow, run in a thread

    def locked(self, ip: str) -> bool:
        """Is ``ip`` locked out now? (Asked at connect; every check asks again.)"""
        return self.throttle.locked(ip)

    # -- PLAIN, LOGIN ------------------------------------------------------------------

    async def check_password(self, ip: str, authcid: str, authzid: str, password: str) -> Verdict:
        """Verify a PLAIN/LOGIN password; ``LockedOut`` before any verification if locked."""
        attempt = self.throttle.begin(ip)
        if attempt is None:
            return LockedOut()
        user = self.policy.login_user(authcid)
        stored = user.password_hash if user is not None else decoy_password_hash()
        # argon2 is slow on purpose: off the event loop, and as slow for unknown users.
        # Should this raise, the attempt stays counted as a failure: nothing to undo.
        ok = await asyncio.to_thread(self._verify, stored, password)
        return self._decide(attempt, user, authcid, authzid, ok)

    # -- SCRAM-SHA-256 -----------------------------------------------------------------

    def scram_start(self, ip: str, authcid: str) -> tuple[Attempt, ScramSecret] | None:
        """The attempt and the keys to build the salt from; None when locked out.

        The salt is the first thing a guesser (or a prober of names) gets: it is budgeted
        like a password check. An unknown name gets decoys as stable as real keys.
        """
        attempt = self.throttle.begin(ip)
        if attempt is None:
            return None
        user = self.policy.login_user(authcid)
        keys = user.scram if user is not None else None
        if keys is None:
            keys = self.decoys.keys(self.policy.login_address(authcid))
        return attempt, keys

    def may_confirm(self, attempt: Attempt, ip: str) -> bool:
        """May the server signature (which says the proof was right) be sent?

        False when the IP got locked out meanwhile; the attempt then counts as failed.
        """
        if self.throttle.locked(ip):
            self.throttle.failure(attempt)
            return False
        return True

    def scram_outcome(self, attempt: Attempt, authcid: str, authzid: str, success: bool) -> Verdict:
        """The verdict on a SCRAM exchange whose proof the core checked."""
        return self._decide(attempt, self.policy.login_user(authcid), authcid, authzid, success)

    # -- failures without a verdict of their own ---------------------------------------

    def abandoned(self, attempt: Attempt) -> None:
        """The client went away in the middle of an attempt: it failed."""
        self.throttle.failure(attempt)

    def given_up(self, ip: str, attempt: Attempt | None) -> Refused:
        """An exchange cancelled (``*``) or broken off: a failure, with its delay."""
        if attempt is not None:
            return Refused(self.throttle.failure(attempt))
        return Refused(self.throttle.cancelled(ip))

    # -- the rules ---------------------------------------------------------------------

    def _decide(
        self, attempt: Attempt, user: User | None, authcid: str, authzid: str, ok: bool
    ) -> Verdict:
        if ok and user is not None and not may_act_as(user, authcid, authzid):
            ok = False
        if ok and user is not None:
            if not self.throttle.success(attempt):  # locked out while we verified
                return LockedOut()
            return Granted(user.address)
        return Refused(self.throttle.failure(attempt))


def may_act_as(user: User, authcid: str, authzid: str) -> bool:
    """RFC 4616 authzid: only the user itself (by the name given or its address)."""
    return not authzid or authzid.lower() in (authcid.lower(), user.address)
