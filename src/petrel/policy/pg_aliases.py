"""Aliases in the shared PostgreSQL database ([users] backend = "postgresql").

``petrel alias add|del|import`` on any node write ``petrel_alias`` (schema version 3);
every node reads the whole table into memory and re-reads it every `pg_table.REFRESH` seconds
in a thread of its own, as `PgUsers` does, so RCPT never waits on the database. Entries
are checked with the file's rules when written and again when read (a row typed in by
hand with a ``|cmd`` target is skipped and logged, never expanded).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from petrel.log import log_event
from petrel.queue.store import StoreUnavailableError

from .aliases import AliasError, AliasTable, check_entry
from .pg_table import Follower, connect

__all__ = ["PgAliases", "shared_aliases"]

log = logging.getLogger("petrel.aliases")


_shared: dict[str, PgAliases] = {}
_shared_lock = threading.Lock()


def shared_aliases(dsn: str) -> PgAliases:
    """One table per database and process: a reload's new policy keeps the same one."""
    with _shared_lock:
        found = _shared.get(dsn)
        if found is None:
            found = _shared[dsn] = PgAliases(dsn)
        return found


class PgAliases(AliasTable):
    """`AliasTable` over ``petrel_alias``; lookups read the copy in memory."""

    def __init__(self, dsn: str) -> None:
        super().__init__("the PostgreSQL database (queue.dsn)", {})
        self.dsn = dsn
        self._bad_rows: set[str] = set()
        self._follower = Follower("aliases", self._load, log)
        self._load()  # at start a database out of reach is an error, not "no aliases"

    def _run(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[list[Any], int]]:
        """Statements in one transaction: (rows, rowcount) of each."""
        with connect(self.dsn, "aliases") as conn:
            try:
                results = []
                with conn.transaction():
                    for sql, params in statements:
                        cur = conn.execute(sql, params)
                        rows = cur.fetchall() if cur.description is not None else []
                        results.append((rows, cur.rowcount))
                return results
            except psycopg.errors.UndefinedTable:
                raise StoreUnavailableError(
                    "aliases: the database has no petrel_alias table (schema older than"
                    " version 3): run 'petrel db migrate'"
                ) from None
            except psycopg.Error as exc:
                raise StoreUnavailableError(f"aliases: PostgreSQL: {exc}") from None

    def _load(self) -> None:
        [(rows, _)] = self._run([("SELECT name, targets FROM petrel_alias", ())])
        entries: dict[str, list[str]] = {}
        bad: set[str] = set()
        for name, targets in rows:
            try:
                key, found = check_entry(name, [targets])
            except AliasError as exc:
                bad.add(str(exc))
                continue
            entries[key] = found
        self._entries = entries
        for problem in sorted(bad - self._bad_rows):  # each bad row said once, not every 2 s
            log_event(log, "alias-row-skipped", level=logging.ERROR, error=problem)
        self._bad_rows = bad

    def reload_if_changed(self) -> bool:
        """The thread re-reads the table; started on the first lookup (the CLI reads once)."""
        self._follower.start()
        return False

    # -- changes (the CLI) -------------------------------------------------------------

    def add(self, name: str, targets: list[str]) -> str:
        """Add one alias (checked as the file's entries are); returns its key."""
        key, found = check_entry(name, targets)
        [(_, count)] = self._run(
            [
                (
                    "INSERT INTO petrel_alias (name, targets) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (key, ", ".join(found)),
                )
            ]
        )
        if count == 0:
            raise AliasError(f"alias {key!r} exists (remove it first with 'petrel alias del')")
        return key

    def delete(self, name: str) -> str:
        key = name.strip().lower()
        [(_, count)] = self._run([("DELETE FROM petrel_alias WHERE name = %s", (key,))])
        if count == 0:
            raise AliasError(f"alias {key!r}: no such alias")
        return key

    def import_entries(self, entries: dict[str, list[str]], *, replace: bool) -> int:
        """Add a parsed file's entries in one transaction (all or none); ``replace``:
        the table becomes exactly the file. Returns how many entries were written."""
        if not replace:
            [(rows, _)] = self._run(
                [("SELECT name FROM petrel_alias WHERE name = ANY(%s)", (list(entries),))]
            )
            if rows:
                names = ", ".join(sorted(row[0] for row in rows))
                raise AliasError(
                    f"already in the table: {names} (--replace makes the table the file)"
                )
        statements: list[tuple[str, tuple[Any, ...]]] = (
            [("DELETE FROM petrel_alias", ())] if replace else []
        )
        statements += [
            ("INSERT INTO petrel_alias (name, targets) VALUES (%s, %s)", (key, ", ".join(t)))
            for key, t in entries.items()
        ]
        self._run(statements)  # one transaction: a name added meanwhile fails it whole
        return len(entries)
