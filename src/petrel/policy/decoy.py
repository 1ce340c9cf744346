"""What an unknown user looks like to AUTH, so that AUTH does not tell who exists.

PLAIN and LOGIN verify against a decoy argon2 hash (the same cost, the same timing).
SCRAM gives out the user's salt and iteration count before any proof (RFC 5802 §9):
an unknown name gets a salt derived by HMAC from a secret kept in
``<data_dir>/scram-decoy.key``, so it is as stable as a real user's, across restarts and
across worker processes, and the real iteration count.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from petrel.fsutil import fsync_dir, unlink_quietly, write_all

from .users import SCRAM_ITERATIONS, ScramSecret, hash_password

__all__ = ["SECRET_FILE", "DecoyError", "ScramDecoys", "decoy_password_hash", "load_secret"]

SECRET_FILE = "scram-decoy.key"
_SECRET_SIZE = 32


class DecoyError(Exception):
    """The secret file exists but is not one (truncated, or something else)."""


def load_secret(path: Path) -> bytes:
    """The secret at ``path``, made (0600) on first use.

    Made in a temporary file and linked into place, which fails if another process won
    the race: whoever loses reads the winner's, and nobody reads a half-written one.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, secrets.token_bytes(_SECRET_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        unlink_quietly(temporary)
    fsync_dir(path.parent)
    return _read(path)


def _read(path: Path) -> bytes:
    secret = path.read_bytes()
    if len(secret) != _SECRET_SIZE:
        raise DecoyError(f"{path}: not a {_SECRET_SIZE}-byte secret; remove it to make a new one")
    return secret


class ScramDecoys:
    """SCRAM keys for names that are no user: the same for every try at one name."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def keys(self, address: str) -> ScramSecret:
        """``address``: the user address the name would have (``Policy.login_address``)."""
        name = address.lower().encode()

        def derive(label: bytes) -> bytes:
            return hmac.digest(self._secret, label + b"\0" + name, hashlib.sha256)

        # The stored key matches no proof: the exchange fails as for a wrong password.
        return ScramSecret(
            derive(b"salt")[:16], SCRAM_ITERATIONS, derive(b"stored"), derive(b"server")
        )


@functools.cache
def decoy_password_hash() -> str:
    """An argon2 hash to verify against for unknown users: same cost, same timing."""
    return hash_password(secrets.token_urlsafe(16))
