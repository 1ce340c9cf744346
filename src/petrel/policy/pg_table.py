"""What the shared PostgreSQL tables of users and aliases have in common.

A change (the CLI) opens a connection of its own; a serving process keeps the whole
table in memory and one thread re-reads it every `REFRESH` seconds, so AUTH, RCPT,
VRFY and EXPN never wait on the database. An outage and the recovery are each logged
once; meanwhile the last copy stays in force.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from petrel.log import log_event
from petrel.queue.pg import CONNECT_TIMEOUT
from petrel.queue.store import StoreUnavailableError

__all__ = ["REFRESH", "Follower", "connect"]

REFRESH = 2.0  # seconds: how soon a change made on another node is seen here


def connect(dsn: str, what: str) -> psycopg.Connection[Any]:
    """An autocommit connection; StoreUnavailableError naming ``what`` if none."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise StoreUnavailableError(f"{what}: cannot connect to PostgreSQL: {exc}") from None


class Follower:
    """The thread that keeps a table's copy fresh, started on the first lookup (the CLI
    reads once and never starts it). ``load`` raises OSError when the database is gone."""

    def __init__(self, what: str, load: Callable[[], None], log: logging.Logger) -> None:
        self.what = what
        self._load = load
        self._log = log
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._forever, name=f"petrel-{self.what}", daemon=True
            )
            self._thread.start()

    def _forever(self) -> None:
        while True:
            time.sleep(REFRESH)
            try:
                self._load()
            except OSError as exc:
                if not self._failing:
                    self._failing = True
                    log_event(
                        self._log, f"{self.what}-unavailable", level=logging.ERROR, error=str(exc)
                    )
                continue
            if self._failing:
                self._failing = False
                log_event(self._log, f"{self.what}-available")
