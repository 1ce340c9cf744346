"""sd_notify(3) without libsystemd: a few lines of AF_UNIX datagrams to ``$NOTIFY_SOCKET``.

systemd (``Type=notify``) sets ``NOTIFY_SOCKET`` to a path or, starting with ``@``, a
name in the abstract namespace. `notify` sends one datagram of ``KEY=value`` lines:
``READY=1`` once the listeners answer, ``RELOADING=1`` (with ``MONOTONIC_USEC``) then
``READY=1`` around a SIGHUP reload, ``STOPPING=1`` at shutdown. Without the variable
(not started by systemd) it does nothing; a failure to send is never fatal.

Only the parent notifies: worker processes are started without the variable.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["NOTIFY_SOCKET_ENV", "monotonic_usec", "notify"]

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``) to the service manager; True when sent."""
    target = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not target or not lines:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode("utf-8"), address)
    except OSError:
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=…``: systemd pairs it with ``RELOADING=1`` (CLOCK_MONOTONIC, µs)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
