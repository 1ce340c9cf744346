"""Refusals counted by reason, for the operator's metrics (``petrel_…`` in ``/metrics``).

Every refusal a client gets for what it *is* or how it *behaves* (rates, caps, lists,
pregreet, greylisting, sender checks) is counted here once, under one stable reason
name, the same name its log line carries as ``reason=``. Syntax errors and unknown
users are not: they are the protocol's and the recipient checks' business.

The counts live in ``<data_dir>/refusals``, one 64-bit counter per reason at a fixed
offset, mapped by every worker process (so ``workers = N`` gives one total) and kept
over restarts, as the rates table is. An increment is a read-modify-write under
``fcntl.lockf``; refusals are rare next to the mail that passes, so the lock costs
nothing on the paths that matter. Reading (`snapshot`) takes no lock: an aligned 8-octet
read sees the old or the new value.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path
from typing import Literal, get_args

__all__ = ["REASONS", "Reason", "Refusals"]

Reason = Literal[
    "too-many-connections",  # limits.connections (with its reserve)
    "too-many-connections-per-ip",  # limits.connections_per_ip, tls_handshakes_per_ip
    "auth-lockout",  # too many failed AUTHs from the client
    "connection-rate",  # limits.connection_rate
    "message-rate",  # limits.message_rate
    "recipient-rate",  # limits.recipient_rate
    "user-message-rate",  # limits.user_message_rate
    "dnsbl",  # antispam.dnsbl score at or over dnsbl_threshold
    "pregreet",  # talked before the 220
    "greylist",  # a triplet not yet seen greylist_delay ago
    "unknown-sender-domain",  # antispam.reject_unknown_sender_domain
    "non-fqdn-helo",  # antispam.reject_non_fqdn_helo
]
REASONS: tuple[Reason, ...] = get_args(Reason)

_MAGIC = b"PTRLREF1"
_HEADER = struct.Struct("<8sI")  # magic, number of counters
_HEADER_SIZE = 64
_COUNTER = struct.Struct("<Q")
_SLOTS = 64  # room for reasons added later without a new file
_SIZE = _HEADER_SIZE + _SLOTS * _COUNTER.size
_OFFSET = {reason: _HEADER_SIZE + i * _COUNTER.size for i, reason in enumerate(REASONS)}


class Refusals:
    """The counters: `count` one refusal, `snapshot` all of them (for ``/metrics``)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd  # None: this process's own counts (the file could not be made)
        self._map = mmap.mmap(-1 if fd is None else fd, _SIZE)

    @classmethod
    def in_memory(cls) -> Refusals:
        return cls(None)

    @classmethod
    def open(cls, path: Path) -> Refusals:
        """The counters at ``path``, made (0600) on first use."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                magic, _ = _HEADER.unpack(os.pread(fd, _HEADER.size, 0).ljust(_HEADER.size, b"\0"))
                if magic != _MAGIC or os.fstat(fd).st_size < _SIZE:
                    try:
                        os.posix_fallocate(fd, 0, _SIZE)
                    except OSError as exc:  # ENOSPC names no file
                        raise OSError(exc.errno, exc.strerror, str(path)) from None
                    os.pwrite(fd, bytes(_SIZE - _HEADER_SIZE), _HEADER_SIZE)
                    os.pwrite(fd, _HEADER.pack(_MAGIC, _SLOTS), 0)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    def count(self, reason: Reason) -> None:
        """One more refusal for ``reason``, seen by every process."""
        offset = _OFFSET[reason]
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            (value,) = _COUNTER.unpack_from(self._map, offset)
            _COUNTER.pack_into(self._map, offset, value + 1)
        finally:
            if self._fd is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def snapshot(self) -> dict[Reason, int]:
        """Every reason's count so far (all processes, since the file was made)."""
        return {
            reason: _COUNTER.unpack_from(self._map, offset)[0]
            for reason, offset in _OFFSET.items()
        }

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
