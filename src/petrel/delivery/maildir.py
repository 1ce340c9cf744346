"""Local delivery into Maildirs at ``<root>/<domain>/<user>/{tmp,new,cur}``.

`root` is ``<data_dir>/mailboxes``. A batch writes every message into ``tmp/``,
syncs the file system once, renames each into ``new/``, and syncs once more, so a
message is reported delivered only when both its bytes and its name are on
stable storage, and ``new/`` never holds a partial file. A batch of one or two
fsyncs each file and its ``new/`` instead of the whole file system. Stored messages use LF
line ends, as Postfix local(8) writes them and Dovecot expects.

Paths are never trusted twice: a batch opens ``mailboxes/`` and each domain directory
without following symlinks, and only if they belong to Petrel's user (or root) and
nobody else may write into them; every later create, rename and unlink goes through
those descriptors. A user's Maildir may itself be a symlink (an operator moving it to
another disk: only a trusted owner can have put the link there); its ``tmp/``,
``new/`` and ``cur/`` are again not followed. `clean_tmp` removes what a crash left in
``tmp/``, by the same rule.

Blocking: call it from a worker thread.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from petrel.fsutil import (
    HAVE_SYNCFS,
    PER_FILE_SYNC_MAX,
    check_trusted,
    open_dir,
    open_dir_at,
    syncfs,
    unlink_quietly,
    write_all,
)

__all__ = [
    "TMP_MAX_AGE",
    "BodySource",
    "DeliveredKeys",
    "DeliveryItem",
    "LineEndConverter",
    "MailboxCounts",
    "MaildirBatch",
    "StoredMessage",
    "clean_tmp",
    "delete_message",
    "deliver_batch",
    "is_unique_name",
    "list_mailboxes",
    "list_messages",
    "mailbox_path",
    "mark_seen",
    "read_message",
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
# The Maildir spec: a file in tmp/ untouched for 36 hours is a crashed writer's debris.
TMP_MAX_AGE = 36 * 3600.0


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
    # A Maildir++ folder of the mailbox ("Junk" for ``.Junk/``), made when needed; "" is
    # the inbox.
    folder: str = ""


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


def _open_trusted(parent_fd: int, name: str, path: Path, *, create: bool) -> tuple[int, bool]:
    """A directory under `parent_fd`, not a symlink, that only we or root may change.

    Returns (fd, created), as `open_dir_at`.
    """
    fd, created = open_dir_at(parent_fd, name, path, create=create)
    try:
        check_trusted(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _open_root(root: Path, *, create: bool) -> int:
    """``mailboxes/`` itself: a real directory of ours, never where a symlink points.

    Its parent, the data directory, is opened as configured: it was checked at start-up.
    """
    if create:
        os.makedirs(root.parent, mode=0o700, exist_ok=True)
    parent = open_dir(root.parent)
    try:
        return _open_trusted(parent, root.name, root, create=create)[0]
    finally:
        os.close(parent)


@dataclass(frozen=True)
class _Mailbox:
    """Open descriptors of one Maildir's directories (owned and closed by its `_Tree`)."""

    domain_fd: int
    maildir_fd: int
    tmp_fd: int
    new_fd: int
    # The directories whose entries this batch created, beyond new/'s: synced with it.
    made: tuple[int, ...] = ()


class _Tree:
    """The directories one batch writes into, each opened once from ``mailboxes/`` down."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_fd = _open_root(root, create=True)
        self.made_domain = False  # a domain directory was created: fsync mailboxes/ too
        self._domains: dict[str, int] = {}
        self._mailboxes: dict[tuple[str, str, str], _Mailbox] = {}
        self._fds: list[int] = []

    def mailbox(self, domain: str, user: str, folder: str = "") -> _Mailbox:
        """The Maildir of user@domain (or its Maildir++ ``folder``), made on first use;
        ValueError for unsafe names."""
        key = (_safe_name(domain, "domain"), _safe_name(user, "user name"), folder)
        box = self._mailboxes.get(key)
        if box is None:
            box = self._mailboxes[key] = self._open(*key)
        return box

    def _open(self, domain: str, user: str, folder: str) -> _Mailbox:
        path = self.root / domain
        domain_fd = self._domains.get(domain)
        if domain_fd is None:
            domain_fd, made_domain = _open_trusted(self.root_fd, domain, path, create=True)
            self._domains[domain] = domain_fd
            self._fds.append(domain_fd)
            self.made_domain |= made_domain
        path /= user
        maildir_fd, made_maildir = open_dir_at(domain_fd, user, path, follow=True)  # a link?
        self._fds.append(maildir_fd)
        if folder:
            maildir_fd = self._folder(maildir_fd, folder, path)
            path /= f".{folder}"
        tmp_fd, made_tmp = open_dir_at(maildir_fd, "tmp", path / "tmp")
        self._fds.append(tmp_fd)
        new_fd, made_new = open_dir_at(maildir_fd, "new", path / "new")
        self._fds.append(new_fd)
        made: tuple[int, ...] = ()
        if made_tmp or made_new:
            cur_fd, _ = open_dir_at(maildir_fd, "cur", path / "cur")
            os.close(cur_fd)
            made = (maildir_fd,)
        if made_maildir:
            made += (domain_fd,)
        return _Mailbox(domain_fd, maildir_fd, tmp_fd, new_fd, made)

    def _folder(self, maildir_fd: int, folder: str, path: Path) -> int:
        """Maildir++ ``.<folder>/`` with its ``maildirfolder`` mark (what Dovecot and
        Courier look for), made and made durable the first time."""
        name = f".{folder}"
        folder_fd, made = open_dir_at(maildir_fd, name, path / name)
        self._fds.append(folder_fd)
        if made:
            mark = os.open(
                "maildirfolder", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=folder_fd
            )
            os.close(mark)
            os.fsync(folder_fd)
            os.fsync(maildir_fd)
        return folder_fd

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        os.close(self.root_fd)


@dataclass
class _Written:
    """A message complete in ``tmp/``, waiting for its rename."""

    index: int
    box: _Mailbox
    name: str  # in tmp/
    new_name: str  # in new/
    fsynced: bool  # synced on its own: small batch, no syncfs, or not root's file system


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
        if item.folder:
            maildir /= f".{item.folder}"
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
    tree: _Tree, covered_dev: int, index: int, item: DeliveryItem, per_file: bool
) -> _Written:
    box = tree.mailbox(item.domain, item.user, item.folder)
    now = time.time_ns() // 1000
    unique = f"K{item.key}" if item.key else f"Q{next(_counter)}"
    # Zero-padded microseconds: a plain `ls` (and sorted()) lists mail in arrival order.
    name = f"{now // 1_000_000}.M{now % 1_000_000:06d}P{os.getpid()}{unique}.{_HOSTNAME}"
    fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=box.tmp_fd)
    try:
        source = item.body_source
        converter = LineEndConverter()
        if isinstance(source, bytes):  # the common case: one write, no chunking
            out = converter.feed(item.prefix) + converter.feed(source) + converter.end()
            write_all(fd, out)
            size = len(out)
        else:
            size = _write_chunks(fd, converter, item.prefix, source())
        fsynced = per_file or not HAVE_SYNCFS or os.fstat(fd).st_dev != covered_dev
        if fsynced:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(name, dir_fd=box.tmp_fd)
        raise
    os.close(fd)
    return _Written(index, box, name, f"{name},S={size}", fsynced)


def _write_chunks(
    fd: int, converter: LineEndConverter, prefix: bytes, chunks: Iterable[bytes]
) -> int:
    size = 0
    out = bytearray(converter.feed(prefix))
    for chunk in chunks:
        out += converter.feed(chunk)
        if len(out) >= _WRITE_CHUNK:
            write_all(fd, out)
            size += len(out)
            out = bytearray()
    out += converter.end()
    write_all(fd, out)
    return size + len(out)


def _sync(tree: _Tree, written: list[_Written], dirs: bool) -> None:
    """One syncfs for the items on root's file system; directory fsyncs for the others."""
    if any(not w.fsynced for w in written):
        syncfs(tree.root_fd)
    if dirs:
        # new/ for the rename; the Maildir and domain too if this batch made entries there
        # (each fsync costs a disk cache flush, even of a directory with nothing to write).
        entries = {fd for w in written if w.fsynced for fd in (w.box.new_fd, *w.box.made)}
        if entries and tree.made_domain:
            entries.add(tree.root_fd)
        for fd in entries:
            os.fsync(fd)


class MaildirBatch:
    """`deliver_batch` in its steps, for a caller that shares the first sync round.

    `write` puts every item into its ``tmp/``; the caller then makes the files durable
    (`sync_data`, or its own syncfs of ``covered_dev``); `publish` renames them into
    ``new/`` and makes the names durable. ``results`` holds per item None (delivered)
    or the exception that stopped it. Intake's direct delivery runs these steps in the
    spool's commit thread, so that spool files and Maildir copies share sync rounds.
    """

    def __init__(
        self, root: Path, items: list[DeliveryItem], delivered: DeliveredKeys | None = None
    ) -> None:
        self.root = root
        self.items = items
        self.results: list[Exception | None] = [None] * len(items)
        self._delivered = delivered
        self._written: list[_Written] = []
        self._tree: _Tree | None = None

    def write(self, per_file: bool, covered_dev: int | None = None) -> None:
        """Every item into ``tmp/``; fsync those a syncfs of ``covered_dev`` (default:
        ``mailboxes/``'s file system) will not cover, or all of them with ``per_file``."""
        try:
            # Opened before any write, so syncfs reports every write-back error of this batch.
            tree = self._tree = _Tree(self.root)
        except OSError as exc:
            self.results = [exc] * len(self.items)
            return
        if covered_dev is None:
            covered_dev = os.fstat(tree.root_fd).st_dev
        for index, item in enumerate(self.items):
            try:
                if item.maybe_done and item in (self._delivered or DeliveredKeys(self.root)):
                    continue  # results[index] stays None: delivered, by the run before the crash
                self._written.append(_write_tmp(tree, covered_dev, index, item, per_file))
            except Exception as exc:
                self.results[index] = exc

    def sync_data(self) -> None:
        """One syncfs for the files written but not fsynced (a failure fails them all)."""
        if self._tree is None:
            return
        try:
            _sync(self._tree, self._written, dirs=False)
        except OSError as exc:
            self.discard(exc)

    def discard(self, error: Exception, indexes: Collection[int] | None = None) -> None:
        """The files in ``tmp/`` (of the items at ``indexes``; default all) will not be
        published: remove them, each of those items failed with ``error``."""
        kept: list[_Written] = []
        for w in self._written:
            if indexes is not None and w.index not in indexes:
                kept.append(w)
                continue
            self.results[w.index] = error
            unlink_quietly(w.name, dir_fd=w.box.tmp_fd)
        self._written = kept

    def publish(self) -> None:
        """Rename each durable file into ``new/``, then make the names durable."""
        if self._tree is None:
            return
        renamed: list[_Written] = []
        for w in self._written:
            try:
                os.rename(w.name, w.new_name, src_dir_fd=w.box.tmp_fd, dst_dir_fd=w.box.new_fd)
            except OSError as exc:
                self.results[w.index] = exc
                unlink_quietly(w.name, dir_fd=w.box.tmp_fd)
            else:
                renamed.append(w)
        self._written = []
        try:
            _sync(self._tree, renamed, dirs=True)
        except OSError as exc:
            # Not durable, so reported as failed: take it back, or the retry would duplicate it.
            for w in renamed:
                self.results[w.index] = exc
                unlink_quietly(w.new_name, dir_fd=w.box.new_fd)

    def close(self) -> None:
        if self._tree is not None:
            self._tree.close()
            self._tree = None


def deliver_batch(
    root: Path, items: list[DeliveryItem], delivered: DeliveredKeys | None = None
) -> list[Exception | None]:
    """Deliver each item; per item None (delivered, durably) or the exception that stopped it.

    One item's failure (unsafe name, full disk, unreadable body) leaves the others alone.
    An item marked ``maybe_done`` whose key is in ``delivered`` is not written again.
    An unusable ``mailboxes/`` (a symlink, someone else's) is every item's error.
    """
    batch = MaildirBatch(root, items, delivered)
    try:
        batch.write(per_file=len(items) <= PER_FILE_SYNC_MAX)  # cheaper than syncfs for so few
        batch.sync_data()
        batch.publish()
    finally:
        batch.close()
    return batch.results


def clean_tmp(
    root: Path, *, now: float | None = None, stop: threading.Event | None = None
) -> tuple[int, int]:
    """Remove files left in Maildirs' ``tmp/`` (and Maildir++ ``.folder/tmp/``) for 36 hours.

    A writer killed between its create and its rename leaves the file there for good.
    Only regular files whose access and modification times are both older than
    `TMP_MAX_AGE` go, unlinked through ``tmp/`` opened without following a link, under
    the directories `deliver_batch` trusts. Returns (files removed, directories skipped
    as unusable). Blocking: run it in a thread; `stop` ends the walk early (shutdown).
    """
    cutoff = (time.time() if now is None else now) - TMP_MAX_AGE
    removed = skipped = 0
    try:
        root_fd = _open_root(root, create=False)
    except FileNotFoundError:
        return removed, skipped
    try:
        for domain in _subdirs(root_fd):
            try:
                domain_fd, _ = _open_trusted(root_fd, domain, root / domain, create=False)
            except OSError:
                skipped += 1
                continue
            try:
                for user in _subdirs(domain_fd):
                    if stop is not None and stop.is_set():
                        return removed, skipped
                    try:
                        removed += _clean_maildir(domain_fd, user, root / domain / user, cutoff)
                    except OSError:
                        skipped += 1
            finally:
                os.close(domain_fd)
    finally:
        os.close(root_fd)
    return removed, skipped


def _subdirs(dir_fd: int) -> list[str]:
    """Names of the directories (or links to them) in `dir_fd` that do not start with a dot."""
    with os.scandir(dir_fd) as entries:
        return [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]


def _clean_maildir(domain_fd: int, user: str, path: Path, cutoff: float) -> int:
    maildir_fd, _ = open_dir_at(domain_fd, user, path, create=False, follow=True)
    try:
        removed = _clean_tmp_dir(maildir_fd, path, cutoff)
        with os.scandir(maildir_fd) as entries:
            folders = [
                e.name
                for e in entries
                if e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
        for folder in folders:  # Maildir++: .Sent, .Lists.petrel, ...
            folder_fd, _ = open_dir_at(maildir_fd, folder, path / folder, create=False)
            try:
                removed += _clean_tmp_dir(folder_fd, path / folder, cutoff)
            finally:
                os.close(folder_fd)
    finally:
        os.close(maildir_fd)
    return removed


def _clean_tmp_dir(maildir_fd: int, path: Path, cutoff: float) -> int:
    try:
        tmp_fd, _ = open_dir_at(maildir_fd, "tmp", path / "tmp", create=False)
    except FileNotFoundError:
        return 0
    removed = 0
    try:
        with os.scandir(tmp_fd) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and max(st.st_atime, st.st_mtime) < cutoff:
                    unlink_quietly(entry.name, dir_fd=tmp_fd)
                    removed += 1
    finally:
        os.close(tmp_fd)
    return removed


# -- reading: the web console and the HTTP API ------------------------------------------
#
# The same trust rule as delivery: ``mailboxes/`` and each domain directory are opened
# without following links and must be ours; a user's Maildir may be an operator's
# symlink; ``new/`` and ``cur/`` are not followed. A message is named by its Maildir
# unique name (the file name before the ``,`` or ``:`` of its info) and found again by
# listing; nothing is ever read or unlinked by a path the caller spelled.

_UNIQUE = re.compile(r"[A-Za-z0-9._=\\-]{1,200}")
_LEADING_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class MailboxCounts:
    """One mailbox (``user@domain``) with its message counts."""

    address: str
    messages: int
    unseen: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message file in a Maildir: ``sub`` is ``new`` or ``cur``."""

    unique: str
    sub: str
    name: str
    seen: bool

    @property
    def order(self) -> tuple[int, str]:
        """Arrival order: the leading seconds of the name, then the name (six-digit usec)."""
        found = _LEADING_NUMBER.match(self.unique)
        return (int(found[0]) if found else 0, self.unique)


def is_unique_name(text: str) -> bool:
    """Could ``text`` be a Maildir unique name (no slash, no info, no dot-only name)?"""
    return _UNIQUE.fullmatch(text) is not None and text.strip(".") != ""


def _unique_of(name: str) -> str:
    for sep in (":", ","):
        name = name.split(sep, 1)[0]
    return name


def _seen(sub: str, name: str) -> bool:
    info = name.partition(":2,")[2] if ":2," in name else ""
    return sub == "cur" and "S" in info


def _open_maildir(root: Path, domain: str, user: str) -> int:
    """The Maildir of user@domain for reading; FileNotFoundError when there is none."""
    domain, user = _safe_name(domain, "domain"), _safe_name(user, "user name")
    root_fd = _open_root(root, create=False)
    try:
        domain_fd, _ = _open_trusted(root_fd, domain, root / domain, create=False)
    finally:
        os.close(root_fd)
    try:
        return open_dir_at(domain_fd, user, root / domain / user, create=False, follow=True)[0]
    finally:
        os.close(domain_fd)


def _entries(maildir_fd: int, path: Path) -> list[StoredMessage]:
    found: list[StoredMessage] = []
    for sub in ("new", "cur"):
        try:
            sub_fd, _ = open_dir_at(maildir_fd, sub, path / sub, create=False)
        except FileNotFoundError:
            continue
        try:
            with os.scandir(sub_fd) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    unique = _unique_of(entry.name)
                    found.append(StoredMessage(unique, sub, entry.name, _seen(sub, entry.name)))
        finally:
            os.close(sub_fd)
    return found


def list_mailboxes(root: Path) -> list[MailboxCounts]:
    """Every Maildir under ``root`` (``<domain>/<user>``), sorted by address.

    Directories that fail the trust rule or cannot be read are left out.
    """
    try:
        root_fd = _open_root(root, create=False)
    except FileNotFoundError:
        return []
    boxes: list[MailboxCounts] = []
    try:
        for domain in _subdirs(root_fd):
            try:
                domain_fd, _ = _open_trusted(root_fd, domain, root / domain, create=False)
            except OSError:
                continue
            try:
                for user in _subdirs(domain_fd):
                    path = root / domain / user
                    try:
                        fd, _ = open_dir_at(domain_fd, user, path, create=False, follow=True)
                    except OSError:
                        continue
                    try:
                        stored = _entries(fd, path)
                    except OSError:
                        continue
                    finally:
                        os.close(fd)
                    unseen = sum(1 for m in stored if not m.seen)
                    boxes.append(MailboxCounts(f"{user}@{domain}", len(stored), unseen))
            finally:
                os.close(domain_fd)
    finally:
        os.close(root_fd)
    return sorted(boxes, key=lambda b: b.address)


def list_messages(root: Path, domain: str, user: str) -> list[StoredMessage]:
    """The messages of user@domain, newest first; FileNotFoundError: no such mailbox."""
    fd = _open_maildir(root, domain, user)
    try:
        stored = _entries(fd, root / domain / user)
    finally:
        os.close(fd)
    return sorted(stored, key=lambda m: m.order, reverse=True)


def _find(fd: int, path: Path, unique: str) -> StoredMessage:
    if not is_unique_name(unique):
        raise FileNotFoundError(f"{unique!r}: not a message name")
    for message in _entries(fd, path):
        if message.unique == unique:
            return message
    raise FileNotFoundError(f"{path}: no message {unique}")


def read_message(root: Path, domain: str, user: str, unique: str, limit: int = -1) -> bytes:
    """The stored bytes (LF line ends) of one message, the first ``limit`` if given."""
    fd = _open_maildir(root, domain, user)
    path = root / domain / user
    try:
        message = _find(fd, path, unique)
        sub_fd, _ = open_dir_at(fd, message.sub, path / message.sub, create=False)
        try:
            file_fd = os.open(
                message.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sub_fd
            )
        finally:
            os.close(sub_fd)
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as fp:
        return fp.read(limit)


def delete_message(root: Path, domain: str, user: str, unique: str) -> None:
    """Unlink one message (through its directory's descriptor); FileNotFoundError if gone."""
    fd = _open_maildir(root, domain, user)
    path = root / domain / user
    try:
        message = _find(fd, path, unique)
        sub_fd, _ = open_dir_at(fd, message.sub, path / message.sub, create=False)
        try:
            os.unlink(message.name, dir_fd=sub_fd)
        finally:
            os.close(sub_fd)
    finally:
        os.close(fd)


def mark_seen(root: Path, domain: str, user: str, unique: str) -> bool:
    """Set the Maildir ``S`` flag (moving it from ``new/`` to ``cur/``), as a reader does.

    False when it was seen already. The rename stays inside the Maildir.
    """
    fd = _open_maildir(root, domain, user)
    path = root / domain / user
    try:
        message = _find(fd, path, unique)
        if message.seen:
            return False
        base, _, flags = message.name.partition(":2,")
        new_name = f"{base}:2,{''.join(sorted(set(flags + 'S')))}"
        old_fd, _ = open_dir_at(fd, message.sub, path / message.sub, create=False)
        try:
            cur_fd, _ = open_dir_at(fd, "cur", path / "cur", create=True)
            try:
                os.rename(message.name, new_name, src_dir_fd=old_fd, dst_dir_fd=cur_fd)
            finally:
                os.close(cur_fd)
        finally:
            os.close(old_fd)
    finally:
        os.close(fd)
    return True
