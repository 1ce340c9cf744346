"""The aliases file: ``name: addr, addr`` per entry, expanded recursively.

Format: ``#`` starts a comment line; blank lines are ignored; a line starting
with whitespace continues the previous entry. A key is a bare local part (for
every local domain) or ``local@domain`` (that domain only, and it wins over the
bare key); keys are case-insensitive. A target is ``user@domain`` or a bare
local part, which means the domain of the address being expanded. Targets that
run programs or write files (``|cmd``, ``/file``, ``:include:``) are refused:
local delivery here is to Maildirs only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from petrel.fsutil import FileSignature, file_signature

__all__ = ["MAX_DEPTH", "AliasError", "Aliases"]

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


class Aliases:
    """An aliases table that can follow edits of its file."""

    def __init__(self, path: Path, entries: dict[str, list[str]], signature: FileSignature) -> None:
        self.path = path
        self._entries = entries
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

    def lookup(self, local: str, domain: str) -> list[str] | None:
        """Direct members of local@domain (a local domain), as full addresses; None if no alias."""
        targets = self._entries.get(f"{local}@{domain}".lower())
        if targets is None:
            targets = self._entries.get(local.lower())
        if targets is None:
            return None
        return [t if "@" in t else f"{t}@{domain}" for t in targets]

    def expand(self, address: str, is_local: Callable[[str], bool]) -> list[str]:
        """The final recipients of `address`: deduplicated, in order of first appearance.

        Only addresses in local domains are looked up. An address met a second
        time is not expanded again, so a loop simply ends (a pure loop yields
        an empty list, which the caller should treat as undeliverable). An
        alias that lists itself also delivers to its own mailbox. AliasError if
        the expansion goes deeper than MAX_DEPTH levels.
        """
        result: list[str] = []
        seen: set[str] = set()

        def walk(current: str, depth: int) -> None:
            key = current.lower()
            if key in seen:
                return
            seen.add(key)
            local, domain = _split(current)
            members = self.lookup(local, domain) if is_local(domain) else None
            if members is None:
                result.append(current)
                return
            if depth >= MAX_DEPTH:
                raise AliasError(
                    f"{self.path}: expanding {address} goes deeper than {MAX_DEPTH} levels"
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
