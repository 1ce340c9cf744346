"""Users in the shared PostgreSQL database ([users] backend = "postgresql").

A `petrel user add` on any node writes ``petrel_user`` (schema version 2); every node
reads the whole table into memory and refreshes it every `pg_table.REFRESH` seconds in a
thread of its own, so AUTH and RCPT checks never wait on the database. The table holds what
the users file holds: the argon2id hash and the SCRAM keys, never a password.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from petrel.queue.store import StoreUnavailableError

from .pg_table import Follower, connect
from .users import ScramSecret, User, UserError, new_user, normalize_address

__all__ = ["PgUsers", "shared_users"]

log = logging.getLogger("petrel.users")


_shared: dict[str, PgUsers] = {}
_shared_lock = threading.Lock()


_NO_ADMINS = (
    'web console admins need [users] backend = "file" (the postgresql store has no admin'
    " flag yet); or use [http] auth = \"none\" on loopback"
)

def shared_users(dsn: str) -> PgUsers:
    """One store per database and process: a reload's new policy keeps the same one."""
    with _shared_lock:
        found = _shared.get(dsn)
        if found is None:
            found = _shared[dsn] = PgUsers(dsn)
        return found


class PgUsers:
    """`UserStore` over ``petrel_user``; reads come from the copy in memory."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.path = "the PostgreSQL database (queue.dsn)"
        self._users: dict[str, User] = {}
        self._domains: frozenset[str] = frozenset()
        self._follower = Follower("users", self._load, log)
        self._load()  # the first table must be real: an empty one would mean "any user"

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        """One statement on a connection of its own: (rows, rowcount)."""
        with connect(self.dsn, "users") as conn:
            try:
                cur = conn.execute(sql, params)
                return (cur.fetchall() if cur.description is not None else []), cur.rowcount
            except psycopg.Error as exc:
                raise StoreUnavailableError(f"users: PostgreSQL: {exc}") from None

    def _load(self) -> None:
        rows, _ = self._execute("SELECT address, password_hash, scram FROM petrel_user")
        users = {}
        for address, password_hash, scram in rows:
            try:
                secret = ScramSecret.decode(scram) if scram else None
            except (ValueError, TypeError):
                secret = None  # SCRAM refused for this user; PLAIN/LOGIN still work
            users[address] = User(address, password_hash, secret)
        self._users = users
        self._domains = frozenset(a.rpartition("@")[2] for a in users)

    def _follow(self) -> None:
        self._follower.start()

    def get(self, address: str) -> User | None:
        self._follow()
        return self._users.get(address.lower())

    def has_users(self, domain: str) -> bool:
        self._follow()
        return domain.lower() in self._domains

    def __iter__(self) -> Iterator[User]:
        return iter(sorted(self._users.values(), key=lambda u: u.address))

    # -- changes (the CLI) -------------------------------------------------------------

    def add(self, address: str, password: str, *, admin: bool = False) -> None:
        if admin:
            raise UserError(_NO_ADMINS)
        user = new_user(normalize_address(address), password)
        _, count = self._execute(
            "INSERT INTO petrel_user (address, password_hash, scram) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (user.address, user.password_hash, user.scram.encode() if user.scram else ""),
        )
        if count == 0:
            raise UserError(f"{user.address}: user exists (use 'petrel user passwd')")

    def set_password(self, address: str, password: str) -> None:
        user = new_user(normalize_address(address), password)
        _, count = self._execute(
            "UPDATE petrel_user SET password_hash = %s, scram = %s WHERE address = %s",
            (user.password_hash, user.scram.encode() if user.scram else "", user.address),
        )
        if count == 0:
            raise UserError(f"{user.address}: no such user")

    def delete(self, address: str) -> None:
        address = normalize_address(address)
        _, count = self._execute("DELETE FROM petrel_user WHERE address = %s", (address,))
        if count == 0:
            raise UserError(f"{address}: no such user")

    # Web console admins are kept in the file store only (no column for them yet).

    def by_token(self, token: str) -> User | None:
        return None

    def new_token(self, address: str) -> str:
        raise UserError(_NO_ADMINS)
