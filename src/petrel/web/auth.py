"""Who may use the console and the API: ``[http] auth``.

``admins`` (the default): HTTP Basic with the password of a user added with ``petrel
user add ADDRESS --admin``, or ``Authorization: Bearer <token>`` with a token from
``petrel user token ADDRESS``. The password goes through the same `Authenticator` as
SMTP AUTH (argon2 in a thread, the decoy hash for unknown users, the same per-IP
throttle and lock-out, shared with the SMTP listeners); a token is budgeted by the same
throttle. Because a browser sends Basic credentials with every request, a success is
remembered for a few minutes (keyed by a keyed hash of the header, and only while the
user's stored hash and admin flag stay the same), so the console does not pay an
argon2 verification per click.

``none``: anyone who can connect (config.py allows it only on loopback listeners).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from petrel import metrics
from petrel.policy.auth import Authenticator, Granted, LockedOut
from petrel.policy.users import User

__all__ = ["Denied", "HttpAuth", "Login", "csrf_token"]

_REMEMBER = 300.0  # seconds a verified Authorization header is trusted without argon2
_REMEMBERED_MAX = 1024


@dataclass(frozen=True, slots=True)
class Login:
    """An authorized request: the admin's address (None under ``auth = "none"``)."""

    user: str | None
    bearer: bool = False  # a token, not ambient browser credentials: no CSRF check


@dataclass(frozen=True, slots=True)
class Denied:
    """401 (no or wrong credentials), 403 (not an admin) or 429 (locked out)."""

    status: int
    message: str


class HttpAuth:
    def __init__(
        self,
        mode: Callable[[], str],
        authenticator: Callable[[], Authenticator],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mode = mode
        self._authenticator = authenticator
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._remembered: dict[bytes, tuple[float, str, str]] = {}  # -> (until, user, hash)

    async def check(self, ip: str, header: str | None) -> Login | Denied:
        if self._mode() == "none":
            return Login(None)
        auth = self._authenticator()
        if not header:
            return Denied(401, "authentication required")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self._bearer(auth, ip, credentials.strip())
        if scheme != "basic":
            return Denied(401, "use HTTP Basic or a bearer token")
        if auth.locked(ip):  # also for a remembered login: locked out means out
            return Denied(429, "too many failed authentications, try again later")
        digest = hmac.digest(self._key, header.encode("utf-8", "replace"), "sha256")
        remembered = self._remembered.get(digest)
        if remembered is not None:
            until, address, stored = remembered
            user = auth.policy.users.get(address)
            if (
                until > self._clock()
                and user is not None
                and user.admin
                and (user.password_hash == stored)
            ):
                return Login(address)
            del self._remembered[digest]
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Denied(401, "malformed Basic credentials")
        name, colon, password = decoded.partition(":")
        if not colon or not name or not password:
            return Denied(401, "malformed Basic credentials")
        verdict = await auth.check_password(ip, name, "", password)
        if isinstance(verdict, LockedOut):
            return Denied(429, "too many failed authentications, try again later")
        if not isinstance(verdict, Granted):
            metrics.AUTH_FAILURES.inc()
            if verdict.delay is None:
                metrics.AUTH_LOCKOUTS.inc()
                return Denied(429, "too many failed authentications, try again later")
            await asyncio.sleep(verdict.delay)  # as SMTP AUTH does before its 535
            return Denied(401, "wrong user name or password")
        user = auth.policy.users.get(verdict.user)
        if user is None or not user.admin:
            return Denied(403, f"{verdict.user} is not an admin (petrel user add --admin)")
        if len(self._remembered) >= _REMEMBERED_MAX:
            self._remembered.clear()
        self._remembered[digest] = (self._clock() + _REMEMBER, user.address, user.password_hash)
        return Login(user.address)

    def _bearer(self, auth: Authenticator, ip: str, token: str) -> Login | Denied:
        attempt = auth.throttle.begin(ip)
        if attempt is None:
            return Denied(429, "too many failed authentications, try again later")
        user: User | None = auth.policy.users.by_token(token) if token else None
        if user is None or not user.admin:
            metrics.AUTH_FAILURES.inc()
            if auth.throttle.failure(attempt) is None:
                metrics.AUTH_LOCKOUTS.inc()
            return Denied(401, "unknown token")
        if not auth.throttle.success(attempt):
            return Denied(429, "too many failed authentications, try again later")
        return Login(user.address, bearer=True)


def csrf_token(key: bytes, user: str | None) -> str:
    """The token the console page carries and sends back with every action."""
    return hashlib.sha256(key + (user or "").encode()).hexdigest()[:32]
