"""The aliases file: ``name: addr, addr`` per entry, expanded recursively.

Format: ``#`` starts a comment line; blank lines are ignored; a line starting
with whitespace continues the previous entry. A key is a bare local part (for
every local domain) or ``local@domain`` (that domain only, and it wins over the
bare key); keys are case-insensitive. A target is ``user@domain`` or a bare
local part, which means the domain of the address being expanded. Targets that
run programs or write files (``|cmd``, ``/file``, ``:include:``) are refused:
local delivery here is to Maildirs only.

With ``[users] backend = "postgresql"`` the table lives in the shared database instead
(`petrel.policy.pg_aliases.PgAliases`, written by ``petrel alias``); `open_aliases`
picks the configured one. Both check entries with `check_entry` and expand them with
`AliasTable.expand`, so the semantics are the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from petrel.config import Config
from petrel.fsutil import FileSignature, file_signature

__all__ = ["MAX_DEPTH", "AliasError", "AliasTable", "Aliases", "check_entry", "open_aliases",
           "parse_file"]

MAX_DEPTH = 20
_FORBIDDEN_CHARS = frozenset(' \t"<>,;()[]\\')


class AliasError(ValueError):
    """A bad aliases file (the message names file and line) or a too deep expansion."""


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an address of the form local@domain: {address!r}")
    return local, domain


def _plausible(name: str) -> bool:
    """A bare local part or local@domain, with nothing that needs quoting."""
    return (
        bool(name)
        and name.count("@") <= 1
        and not name.startswith("@")
        and not name.endswith("@")
        and not _FORBIDDEN_CHARS.intersection(name)
    )


def _check_target(target: str, where: str) -> None:
    if target.startswith(("|", "/", ":include:")):
        raise AliasError(
            f"{where}: {target!r}: program, file and :include: targets are not supported"
        )
    if not _plausible(target):
        raise AliasError(f"{where}: {target!r} is not a user name or address")


def check_entry(name: str, targets: list[str]) -> tuple[str, list[str]]:
    """An entry as ``petrel alias add`` gives it: (lower-cased key, targets as written).

    A target may hold several addresses separated by commas, as in the file. AliasError
    names the first mistake in one line, with the file loader's words.
    """
    key = name.strip().lower()
    if not _plausible(key) or ":" in key:  # the file's key ends at its first colon
        raise AliasError(f"alias {name!r}: not a local part or local@domain")
    where = f"alias {key!r}"
    found = []
    for target in (t.strip() for text in targets for t in text.split(",")):
        if target:
            _check_target(target, where)
            found.append(target)
    if not found:
        raise AliasError(f"{where} has no targets")
    return key, found


def _parse(data: bytes, source: str) -> dict[str, list[str]]:
    """Entries by lower-cased key (``local`` or ``local@domain``), targets as written."""
    entries: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    current: str | None = None
    for number, line_bytes in enumerate(data.split(b"\n"), start=1):
        where = f"{source}:{number}"
        try:
            line = line_bytes.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise AliasError(f"{where}: not valid UTF-8") from None
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            if current is None:
                raise AliasError(f"{where}: continuation line without an alias before it")
            text = line
        else:
            key, colon, text = line.partition(":")
            key = key.strip().lower()
            if not colon or not _plausible(key):
                raise AliasError(f"{where}: expected 'name: address, address'")
            if key in first_line:
                raise AliasError(
                    f"{where}: duplicate alias {key!r} (first at line {first_line[key]})"
                )
            first_line[key] = number
            entries[key] = []
            current = key
        for target in (t.strip() for t in text.split(",")):
            if target:
                _check_target(target, where)
                entries[current].append(target)
    for key, targets in entries.items():
        if not targets:
            raise AliasError(f"{source}:{first_line[key]}: alias {key!r} has no targets")
    return entries


def _read(path: Path) -> tuple[dict[str, list[str]], FileSignature]:
    """Parse the file; a missing file is an empty table."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return {}, None
    return _parse(data, str(path)), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def parse_file(path: Path) -> dict[str, list[str]]:
    """The entries of an aliases file (``petrel alias import``); AliasError, OSError."""
    return _parse(path.read_bytes(), str(path))


def open_aliases(config: Config, running: AliasTable | None = None) -> AliasTable:
    """The configured table: the aliases file, or the shared database's with
    ``[users] backend = "postgresql"``. ``running`` is kept if it is the same (a reload)."""
    if config.users.backend == "postgresql":
        from petrel.policy.pg_aliases import shared_aliases

        return shared_aliases(config.queue.dsn)
    if isinstance(running, Aliases) and running.path == config.aliases.file:
        return running
    return Aliases.load(config.aliases.file)


class AliasTable:
    """Lookup and expansion over entries by lower-cased key; subclasses fill them."""

    def __init__(self, source: str, entries: dict[str, list[str]]) -> None:
        self.source = source  # where the entries come from, for messages
        self._entries = entries

    def reload_if_changed(self) -> bool:
        """Follow changes of the source; True if the table was re-read just now."""
        return False

    def items(self) -> list[tuple[str, list[str]]]:
        """Every entry, sorted by key (``petrel alias list``)."""
        self.reload_if_changed()
        return sorted(self._entries.items())

    def lookup(self, local: str, domain: str) -> list[str] | None:
        """Direct members of local@domain (a local domain), as full addresses; None if no alias."""
        return _members(self._entries, local, domain)

    def expand(self, address: str, is_local: Callable[[str], bool]) -> list[str]:
        """The final recipients of `address`: deduplicated, in order of first appearance.

        Only addresses in local domains are looked up. An address met a second
        time is not expanded again, so a loop simply ends (a pure loop yields
        an empty list, which the caller should treat as undeliverable). An
        alias that lists itself also delivers to its own mailbox. AliasError if
        the expansion goes deeper than MAX_DEPTH levels.
        """
        entries = self._entries  # one table for the whole expansion, even if it is re-read
        result: list[str] = []
        seen: set[str] = set()

        def walk(current: str, depth: int) -> None:
            key = current.lower()
            if key in seen:
                return
            seen.add(key)
            local, domain = _split(current)
            members = _members(entries, local, domain) if is_local(domain) else None
            if members is None:
                result.append(current)
                return
            if depth >= MAX_DEPTH:
                raise AliasError(
                    f"{self.source}: expanding {address} goes deeper than {MAX_DEPTH} levels"
                )
            for member in members:
                if member.lower() == key:
                    result.append(current)
                else:
                    walk(member, depth + 1)

        walk(address, 0)
        # An alias listing itself more than once would repeat its own mailbox.
        unique: dict[str, str] = {}
        for final in result:
            unique.setdefault(final.lower(), final)
        return list(unique.values())


class Aliases(AliasTable):
    """An aliases table that can follow edits of its file."""

    def __init__(self, path: Path, entries: dict[str, list[str]], signature: FileSignature) -> None:
        super().__init__(str(path), entries)
        self.path = path
        self._signature = signature

    @classmethod
    def load(cls, path: Path) -> Aliases:
        """Read `path` (missing = no aliases); AliasError names file and line of a mistake."""
        entries, signature = _read(path)
        return cls(path, entries, signature)

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed (one stat when it did not); True if reloaded.

        On a broken edit the old table stays in force and AliasError is raised
        once; the same broken file is not re-parsed on later calls.
        """
        signature = file_signature(self.path)
        if signature == self._signature:
            return False
        # Remembered first: a broken file is reported once, not on every call.
        self._signature = signature
        self._entries, self._signature = _read(self.path)
        return True


def _members(entries: dict[str, list[str]], local: str, domain: str) -> list[str] | None:
    """local@domain's entry wins over the bare local part's; bare targets get ``domain``."""
    targets = entries.get(f"{local}@{domain}".lower())
    if targets is None:
        targets = entries.get(local.lower())
    if targets is None:
        return None
    return [t if "@" in t else f"{t}@{domain}" for t in targets]
