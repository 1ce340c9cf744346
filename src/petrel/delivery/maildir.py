"""Local delivery into Maildirs at ``<root>/<domain>/<user>/{tmp,new,cur}``.

`root` is ``<data_dir>/mailboxes``. A batch writes every message into ``tmp/``,
syncs the file system once, renames each into ``new/``, and syncs once more, so a
message is reported delivered only when both its bytes and its name are on
stable storage, and ``new/`` never holds a partial file. A batch of one or two
fsyncs each file and its ``new/`` instead of the whole file system. Stored messages use LF
line ends, as Postfix local(8) writes them and Dovecot expects.

An existing Maildir is used as found (an operator may have symlinked it to
another disk); directories Petrel creates must turn out to be real directories.

Blocking: call it from a worker thread.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from petrel.fsutil import (
    HAVE_SYNCFS,
    PER_FILE_SYNC_MAX,
    ensure_dir,
    fsync_dir,
    open_dir,
    syncfs,
    unlink_quietly,
    write_all,
)

__all__ = [
    "BodySource",
    "DeliveredKeys",
    "DeliveryItem",
    "LineEndConverter",
    "deliver_batch",
    "mailbox_path",
]

# The bytes themselves, or a callable giving a fresh iterator of chunks (one per
# item, so several mailboxes can stream the same spool file).
BodySource = bytes | Callable[[], Iterable[bytes]]

_UNSAFE = re.compile(r"[/\x00-\x1f\x7f-\x9f]")
_WRITE_CHUNK = 1 << 20
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The Maildir spec escapes these two in the host part of a file name.
_HOSTNAME = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
_counter = itertools.count()


@dataclass(frozen=True)
class DeliveryItem:
    """One message for one mailbox: `prefix` (Return-Path, Delivered-To) goes first."""

    domain: str
    user: str
    prefix: bytes
    body_source: BodySource
    # A name part unique to this message and recipient (queue id + index). It is put in
    # the file name, so that a delivery repeated after a crash can see it was done.
    key: str = ""
    # True when an earlier attempt may have finished unrecorded (the queue was recovered
    # after a crash): look for ``key`` among the delivered ones before writing again.
    maybe_done: bool = False


class LineEndConverter:
    """CRLF → LF over a stream of chunks, including a CRLF split between two chunks."""

    def __init__(self) -> None:
        self._held_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
        self._held_cr = chunk.endswith(b"\r")
        if self._held_cr:
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n")

    def end(self) -> bytes:
        """A CR that ended the stream was not part of a CRLF: give it back."""
        return b"\r" if self._held_cr else b""


def _safe_name(name: str, what: str) -> str:
    """Lower-case `name`, refusing anything that could leave its directory or confuse tools."""
    lowered = name.lower()
    if not lowered or lowered.startswith(".") or _UNSAFE.search(lowered):
        raise ValueError(f"unsafe {what} for a mailbox: {name!r}")
    return lowered


def mailbox_path(root: Path, domain: str, user: str) -> Path:
    """The Maildir of user@domain under `root`; ValueError for unsafe names."""
    return root / _safe_name(domain, "domain") / _safe_name(user, "user name")


@dataclass
class _Written:
    """A message complete in ``tmp/``, waiting for its rename."""

    index: int
    tmp: Path
    new: Path
    fsynced: bool  # synced on its own: small batch, no syncfs, or not root's file system


def _create_tmp(maildir: Path, name: str) -> tuple[int, Path]:
    """Create ``tmp/<name>`` exclusively, making the Maildir on first use."""
    tmp = maildir / "tmp" / name
    try:
        return os.open(tmp, _CREATE_FLAGS, 0o600), tmp
    except FileNotFoundError:
        ensure_dir(maildir.parent)
        ensure_dir(maildir)
        for sub in ("tmp", "new", "cur"):
            ensure_dir(maildir / sub)
        return os.open(tmp, _CREATE_FLAGS, 0o600), tmp


_KEY_IN_NAME = re.compile(r"P[0-9]+K([0-9A-Z]{14}R[0-9]+)\.")


class DeliveredKeys:
    """The delivery keys already in each mailbox's new/ and cur/, listed once per mailbox.

    After a crash every recovered delivery must check that it was not done just before
    the crash. Listing a big mailbox per message cost 40 ms each (46 730 files); one
    listing per mailbox for the whole recovery makes each check a set lookup. The
    listing stays valid for it: only keys of deliveries that may have finished *before*
    it are asked for, and those are on disk by then.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._keys: dict[Path, set[str]] = {}

    def __contains__(self, item: DeliveryItem) -> bool:
        if not item.key:
            return False
        maildir = mailbox_path(self.root, item.domain, item.user)
        keys = self._keys.get(maildir)
        if keys is None:
            keys = self._keys[maildir] = set()
            for sub in ("new", "cur"):
                try:
                    names = os.listdir(maildir / sub)
                except FileNotFoundError:
                    continue
                for name in names:
                    found = _KEY_IN_NAME.search(name)
                    if found is not None:
                        keys.add(found[1])
        return item.key in keys


def _write_tmp(
    root: Path, root_dev: int, index: int, item: DeliveryItem, per_file: bool
) -> _Written:
    maildir = mailbox_path(root, item.domain, item.user)
    now = time.time_ns() // 1000
    unique = f"K{item.key}" if item.key else f"Q{next(_counter)}"
    # Zero-padded microseconds: a plain `ls` (and sorted()) lists mail in arrival order.
    name = f"{now // 1_000_000}.M{now % 1_000_000:06d}P{os.getpid()}{unique}.{_HOSTNAME}"
    fd, tmp = _create_tmp(maildir, name)
    try:
        source = item.body_source
        chunks = (source,) if isinstance(source, bytes) else source()
        converter = LineEndConverter()
        size = 0
        out = bytearray(converter.feed(item.prefix))
        for chunk in chunks:
            out += converter.feed(chunk)
            if len(out) >= _WRITE_CHUNK:
                write_all(fd, out)
                size += len(out)
                out = bytearray()
        out += converter.end()
        write_all(fd, out)
        size += len(out)
        fsynced = per_file or not HAVE_SYNCFS or os.fstat(fd).st_dev != root_dev
        if fsynced:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    return _Written(index, tmp, maildir / "new" / f"{name},S={size}", fsynced)


def _sync(root_fd: int, written: list[_Written], dirs: bool) -> None:
    """One syncfs for the items on root's file system; directory fsyncs for the others."""
    if any(not w.fsynced for w in written):
        syncfs(root_fd)
    if dirs:
        # new/ for the rename; the Maildir and domain too, in case this batch made them.
        entries = {d for w in written if w.fsynced for d in w.new.parents[:3]}
        for directory in entries:
            fsync_dir(directory)


def deliver_batch(
    root: Path, items: list[DeliveryItem], delivered: DeliveredKeys | None = None
) -> list[Exception | None]:
    """Deliver each item; per item None (delivered, durably) or the exception that stopped it.

    One item's failure (unsafe name, full disk, unreadable body) leaves the others alone.
    An item marked ``maybe_done`` whose key is in ``delivered`` is not written again.
    """
    results: list[Exception | None] = [None] * len(items)
    os.makedirs(root, mode=0o700, exist_ok=True)
    # Opened before any write, so syncfs reports every write-back error of this batch.
    root_fd = open_dir(root)
    try:
        root_dev = os.fstat(root_fd).st_dev
        written: list[_Written] = []
        per_file = len(items) <= PER_FILE_SYNC_MAX  # cheaper than syncfs for so few
        for index, item in enumerate(items):
            try:
                if item.maybe_done and item in (delivered or DeliveredKeys(root)):
                    continue  # results[index] stays None: delivered, by the run before the crash
                written.append(_write_tmp(root, root_dev, index, item, per_file))
            except Exception as exc:
                results[index] = exc
        try:
            _sync(root_fd, written, dirs=False)
        except OSError as exc:
            for w in written:
                results[w.index] = exc
                unlink_quietly(w.tmp)
            return results
        renamed: list[_Written] = []
        for w in written:
            try:
                os.rename(w.tmp, w.new)
            except OSError as exc:
                results[w.index] = exc
                unlink_quietly(w.tmp)
            else:
                renamed.append(w)
        try:
            _sync(root_fd, renamed, dirs=True)
        except OSError as exc:
            # Not durable, so reported as failed: take it back, or the retry would duplicate it.
            for w in renamed:
                results[w.index] = exc
                unlink_quietly(w.new)
    finally:
        os.close(root_fd)
    return results
