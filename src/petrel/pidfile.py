"""``<data_dir>/petrel.pid``: how ``petrel reload`` finds the running ``petrel serve``.

The server writes it once its listeners are bound and removes it at a clean shutdown.
A file left behind by a crash may name a pid the kernel has since given to another
program, so the reader checks that the process really is a ``petrel serve`` before
anyone signals it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from petrel.fsutil import unlink_quietly

__all__ = ["PID_FILE", "PidFileError", "remove_pid_file", "running_pid", "write_pid_file"]

PID_FILE = "petrel.pid"


class PidFileError(Exception):
    """No running ``petrel serve`` for this data directory (the message says why)."""


def write_pid_file(data_dir: Path) -> Path:
    """Write our pid atomically (a reader never sees a half-written number).

    On failure (a full disk) the file of an earlier server goes too, then the error is
    raised: a stale pid, perhaps reused by another process, is worse than none.
    """
    path = data_dir / PID_FILE
    tmp = path.with_name(PID_FILE + ".tmp")
    try:
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError:
        unlink_quietly(tmp)
        unlink_quietly(path)
        raise
    return path


def remove_pid_file(data_dir: Path) -> None:
    """Remove the pid file if it is still ours (a newer server may have replaced it)."""
    path = data_dir / PID_FILE
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def _command_line(pid: int) -> list[str] | None:
    """The argv of process ``pid``, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self/cmdline").exists():
            return None  # Linux: the process is gone
    except OSError:
        return None
    else:
        return raw.decode(errors="replace").split("\0")
    try:  # no /proc (BSD, macOS): ask ps
        result = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.split() if result.returncode == 0 and result.stdout.strip() else None


def _is_petrel_serve(argv: list[str]) -> bool:
    """``petrel serve …``, ``python -m petrel serve …`` or the installed script."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "petrel" or (arg == "-m" and argv[i + 1 : i + 2] == ["petrel"]):
            rest = argv[i + 1 :] if arg != "-m" else argv[i + 2 :]
            return "serve" in rest
    return False


def running_pid(data_dir: Path) -> int:
    """The pid of the ``petrel serve`` that owns ``data_dir``; PidFileError if there is none."""
    path = data_dir / PID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise PidFileError(f"{path} does not exist: is petrel serve running?") from None
    except OSError as exc:
        raise PidFileError(f"cannot read {path}: {exc}") from None
    if not text.isdigit() or int(text) <= 1:
        raise PidFileError(f"{path} does not hold a process id: {text[:20]!r}")
    pid = int(text)
    argv = _command_line(pid)
    if argv is None:
        raise PidFileError(f"stale {path}: no process {pid} (petrel serve is not running)")
    if not _is_petrel_serve(argv):
        raise PidFileError(f"stale {path}: process {pid} is not petrel serve, not signalling it")
    return pid
