"""Small, paranoid file-system helpers shared by the spool and local delivery.

`syncfs(2)` flushes a whole file system in one call; writing a batch of files and
syncing once is about three times cheaper per message than one fsync per file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "HAVE_SYNCFS",
    "ensure_dir",
    "fsync_dir",
    "open_dir",
    "syncfs",
    "unlink_quietly",
    "write_all",
]


def _kernel_reports_syncfs_errors() -> bool:
    """syncfs(2) returns write-back errors only since Linux 5.8; older ones say 0 regardless."""
    uname = os.uname()
    if uname.sysname != "Linux":
        return False
    try:
        major, minor = (int(part) for part in uname.release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def _load_syncfs() -> Callable[[int], int] | None:
    if not _kernel_reports_syncfs_errors():
        return None  # fall back to fsync per file, which does report errors
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()
HAVE_SYNCFS = _SYNCFS is not None


def syncfs(fd: int) -> None:
    """Flush every dirty page and metadata change of the file system holding open `fd`.

    Since Linux 5.8 this also reports write-back errors that happened after `fd`
    was opened, so keep the fd from before the writes it must vouch for. An error
    raises OSError. ctypes releases the GIL, so a worker thread may call this.
    """
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available on this system")
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def open_dir(path: Path) -> int:
    """Open directory `path` read-only (for syncfs or fsync); the caller closes the fd."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (creations, renames, unlinks) durable."""
    fd = open_dir(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o700) -> bool:
    """Create directory `path` (parent must exist); refuse anything that is not a real directory.

    A symlink planted where a private directory belongs could redirect mail
    elsewhere, so an existing entry must be a directory itself. Returns True when
    the directory was created by this call (the caller may want to fsync the parent).
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
        return False
    return True


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is out: a short write is legal and must not lose data."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def unlink_quietly(path: Path) -> None:
    """Remove `path` if it is there: clean-up paths must not fail on what is already gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
