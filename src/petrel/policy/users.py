"""The user store: ``<data_dir>/users``, one ``address:argon2id-hash:scram-secret`` per line.

Web console administrators (`petrel user add ADDRESS --admin`) have two more fields,
``:admin:<token-hash>``: the flag and the SHA-256 of their API token (`petrel user
token`, empty until one is made). A token is 32 random bytes, so a fast hash guards it
as well as argon2 guards a password.

A plain text file keeps the store inspectable and greppable by an operator, and a
running server follows edits by a stat per lookup (as the aliases file does). Passwords
are kept as argon2id hashes (for PLAIN/LOGIN) plus RFC 5802 SCRAM-SHA-256 keys (for
SCRAM, which cannot work from an argon2 hash); neither gives the password back.
Writes go to a temporary file that is fsynced and renamed, under an exclusive lock,
so a concurrent ``petrel user`` and a reading server never see half a file.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from petrel.fsutil import FileSignature, file_signature, fsync_dir, unlink_quietly, write_all

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from petrel.config import Config

__all__ = [
    "TOKEN_PREFIX",
    "ScramSecret",
    "User",
    "UserError",
    "UserStore",
    "Users",
    "hash_password",
    "hash_token",
    "open_users",
    "scram_secret",
]

SCRAM_ITERATIONS = 4096  # RFC 7677 §4 minimum; argon2id guards the other mechanisms
TOKEN_PREFIX = "petrel_"  # API tokens say what they are (secret scanners, logs)


class UserError(ValueError):
    """A bad address, an unknown user or a broken users file."""


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """RFC 5802 §3 server-side keys: enough to verify a client, not to log in as it."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        b64 = base64.b64encode
        return (
            f"SCRAM-SHA-256${self.iterations}${b64(self.salt).decode()}$"
            f"{b64(self.stored_key).decode()}${b64(self.server_key).decode()}"
        )

    @classmethod
    def decode(cls, text: str) -> ScramSecret:
        scheme, iterations, salt, stored, server = text.split("$")
        if scheme != "SCRAM-SHA-256":
            raise ValueError(f"unknown SCRAM scheme {scheme!r}")
        b64 = base64.b64decode
        return cls(b64(salt), int(iterations), b64(stored), b64(server))


@dataclass(frozen=True, slots=True)
class User:
    address: str
    password_hash: str
    scram: ScramSecret | None
    admin: bool = False  # may use the web console and the HTTP API ([http] auth = "admins")
    token_hash: str | None = None  # SHA-256 hex of the API token (`petrel user token`)

    def line(self) -> str:
        """The user's line in the file (without the newline)."""
        fields = [self.address, self.password_hash, self.scram.encode() if self.scram else ""]
        if self.admin or self.token_hash:
            fields += ["admin" if self.admin else "", self.token_hash or ""]
        return ":".join(fields)


def scram_secret(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> ScramSecret:
    """SaltedPassword → ClientKey → StoredKey, ServerKey (RFC 5802 §3, SHA-256)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return ScramSecret(salt, iterations, hashlib.sha256(client_key).digest(), server_key)


def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) defaults


def hash_password(password: str) -> str:
    return str(_hasher().hash(password))


def verify_password(password_hash: str, password: str) -> bool:
    """Constant-time argon2 verification; slow on purpose, so run it in a thread."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(_hasher().verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def hash_token(token: str) -> str:
    """What the store keeps of an API token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_address(address: str) -> str:
    """Lower-cased ``local@domain``; refuses what cannot be a mailbox of ours."""
    text = address.strip().lower()
    local, at, domain = text.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or local.startswith(".")
        or any(c in text for c in ":/\\ \t\r\n\0")
    ):
        raise UserError(f"not a valid user address: {address!r}")
    return text


def _parse(data: str, source: Path) -> dict[str, User]:
    users: dict[str, User] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":", 4)
        if len(parts) < 2:
            raise UserError(f"{source}:{number}: expected 'address:hash[:scram[:admin:token]]'")
        scram = None
        if len(parts) >= 3 and parts[2]:
            try:
                scram = ScramSecret.decode(parts[2])
            except (ValueError, TypeError):
                raise UserError(f"{source}:{number}: bad SCRAM secret") from None
        flag = parts[3] if len(parts) >= 4 else ""
        if flag not in ("", "admin"):
            raise UserError(f"{source}:{number}: unknown flag {flag!r} (expected 'admin')")
        token = parts[4] if len(parts) == 5 and parts[4] else None
        address = parts[0].lower()
        users[address] = User(address, parts[1], scram, flag == "admin", token)
    return users


class UserStore(Protocol):
    """What AUTH, the recipient checks and `petrel user` need: `Users` (the file) or
    `petrel.policy.pg_users.PgUsers` (the shared database, [users] backend)."""

    @property
    def path(self) -> Path | str:
        """Where the users are, for messages."""
        ...

    def get(self, address: str) -> User | None: ...

    def has_users(self, domain: str) -> bool: ...

    def __iter__(self) -> Iterator[User]: ...

    def add(self, address: str, password: str, *, admin: bool = False) -> None: ...

    def set_password(self, address: str, password: str) -> None: ...

    def delete(self, address: str) -> None: ...

    def by_token(self, token: str) -> User | None:
        """The admin whose HTTP API token this is (`petrel user token`)."""
        ...

    def new_token(self, address: str) -> str: ...


def open_users(config: Config) -> UserStore:
    """The configured user store ([users] backend)."""
    if config.users.backend == "postgresql":
        from petrel.policy.pg_users import shared_users

        return shared_users(config.queue.dsn)
    return Users(config.server.data_dir / "users")


def new_user(address: str, password: str) -> User:
    """A user record: the argon2id hash and the SCRAM keys of ``password``."""
    return User(address, hash_password(password), scram_secret(password))


class Users:
    """The users of every local domain, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, User] = {}
        self._domains: frozenset[str] = frozenset()
        self._signature: FileSignature = ("unread",)  # type: ignore[assignment]
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """One stat when nothing changed; a broken file keeps the old table in force."""
        signature = file_signature(self.path)
        if signature == self._signature:
            return False
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        # A failed read (a root-owned 0600 file, say) is not remembered: fixing the
        # file's owner or mode changes no part of its signature, and the next lookup
        # must read it again rather than trust the empty table.
        self._signature = signature
        self._users = _parse(text, self.path)
        self._domains = frozenset(a.rpartition("@")[2] for a in self._users)
        return True

    def get(self, address: str) -> User | None:
        self.reload_if_changed()
        return self._users.get(address.lower())

    def has_users(self, domain: str) -> bool:
        """Does ``domain`` have any user (and so leave the development mode)?"""
        self.reload_if_changed()
        return domain.lower() in self._domains

    def __iter__(self) -> Iterator[User]:
        self.reload_if_changed()
        return iter(sorted(self._users.values(), key=lambda u: u.address))

    # -- changes (the CLI) -------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, User]]:
        """Read-modify-write under an exclusive lock; the new file replaces the old."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._signature = ("unread",)  # type: ignore[assignment]
            self.reload_if_changed()
            users = dict(self._users)
            yield users
            lines = [u.line() + "\n" for u in sorted(users.values(), key=lambda u: u.address)]
            tmp = self.path.with_name(self.path.name + ".tmp")
            unlink_quietly(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                write_all(fd, "".join(lines).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        finally:
            os.close(lock)

    def by_token(self, token: str) -> User | None:
        """The user whose API token this is (compared in constant time), or None."""
        wanted = hash_token(token)
        self.reload_if_changed()
        found = None
        for user in self._users.values():
            if user.token_hash is not None and hmac.compare_digest(user.token_hash, wanted):
                found = user
        return found

    def add(self, address: str, password: str, *, admin: bool = False) -> None:
        address = normalize_address(address)
        with self._locked() as users:
            if address in users:
                raise UserError(f"{address}: user exists (use 'petrel user passwd')")
            users[address] = dataclasses.replace(new_user(address, password), admin=admin)

    def set_password(self, address: str, password: str) -> None:
        address = normalize_address(address)
        with self._locked() as users:
            if address not in users:
                raise UserError(f"{address}: no such user")
            fresh = new_user(address, password)  # the admin flag and the token stay
            users[address] = dataclasses.replace(
                users[address], password_hash=fresh.password_hash, scram=fresh.scram
            )

    def new_token(self, address: str) -> str:
        """Make (or replace) an admin's API token; the token itself is shown only now."""
        address = normalize_address(address)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked() as users:
            user = users.get(address)
            if user is None:
                raise UserError(f"{address}: no such user")
            if not user.admin:
                raise UserError(f"{address}: not an admin (add one with 'petrel user add --admin')")
            users[address] = dataclasses.replace(user, token_hash=hash_token(token))
        return token

    def delete(self, address: str) -> None:
        address = normalize_address(address)
        with self._locked() as users:
            if users.pop(address, None) is None:
                raise UserError(f"{address}: no such user")
