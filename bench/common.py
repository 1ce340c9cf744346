"""Small helpers shared by the bench: bounded waits, process memory, Maildir counts."""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """Something in the bench itself failed (a server did not start, a wait ran out)."""


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, step: float = 0.02
) -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (inherited by servers we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fp:
                stat = fp.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as fp:
            for line in fp:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over ``pids``; PSS shares common pages out fairly."""
    rss = sum(_kib(f"/proc/{pid}/status", "VmRSS:") for pid in pids)
    pss = sum(_kib(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)
    return rss, pss


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the live processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def count_files(directory: Path) -> int:
    """Number of entries in ``directory`` (0 when it does not exist yet)."""
    try:
        with os.scandir(directory) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def empty_maildir(maildir: Path) -> None:
    """Remove the messages under new/, cur/ and tmp/ of ``maildir``, keeping the folders."""
    for sub in ("new", "cur", "tmp"):
        folder = maildir / sub
        if folder.is_dir():
            for entry in os.scandir(folder):
                os.unlink(entry.path)


def command_output(argv: list[str]) -> str:
    """First line of a command's output, or "?" when it cannot run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine_facts() -> dict[str, str]:
    """What the report needs to say about where it ran."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = _kib("/proc/meminfo", "MemTotal:")
    postfix = command_output(["postconf", "-d", "-h", "mail_version"])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "postfix": postfix,
        "smtp-source": "from Postfix " + postfix,
        "loadavg at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
