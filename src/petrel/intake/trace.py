"""The trace field (RFC 5321 §4.4) Petrel puts on top of every message it takes in."""

from __future__ import annotations

import email.utils
import functools
import time
from dataclasses import dataclass

__all__ = ["LOCAL_PROTOCOL", "Origin", "received_field", "rfc5322_date"]

LOCAL_PROTOCOL = "local"  # Envelope.protocol of mail submitted with `petrel sendmail`


@functools.lru_cache(maxsize=4)
def _date_at(second: int) -> str:
    return email.utils.formatdate(second, localtime=True)


def rfc5322_date(timestamp: float | None = None) -> str:
    """The RFC 5322 date-time of ``timestamp`` (default now), made once per second.

    It has one-second precision anyway, and formatdate showed in the receive-path profile.
    """
    return _date_at(int(time.time() if timestamp is None else timestamp))


@dataclass(frozen=True, slots=True)
class Origin:
    """Who handed a message in: what its Received field says about the client.

    An SMTP client has an address, a HELO name and perhaps a PTR name and TLS; a local
    submission has the login and uid that ran ``petrel sendmail``.
    """

    protocol: str  # RFC 3848 with-protocol, or LOCAL_PROTOCOL
    ip: str = ""
    helo: str = ""
    rdns: str | None = None
    tls: str | None = None  # "TLSv1.3 with cipher … (256/256 bits)"
    local_user: str | None = None
    uid: int | None = None


def received_field(
    hostname: str, queue_id: str, when: float, origin: Origin | None, for_rcpt: str | None
) -> bytes:
    """The folded Received field; ``origin`` None for Petrel's own notices.

    ``for_rcpt`` is given only for a message with one recipient: listing several would
    disclose Bcc recipients to each other.
    """
    if origin is None:
        return f"Received: by {hostname} (Petrel) id {queue_id}; {rfc5322_date(when)}\r\n".encode()
    if origin.local_user is not None:
        lines = [f"Received: from local user {origin.local_user} (uid {origin.uid})"]
    else:
        rdns = origin.rdns or "unknown"
        lines = [f"Received: from {origin.helo or 'unknown'} ({rdns} [{origin.ip}])"]
        if origin.tls is not None:
            lines.append(f"\t(using {origin.tls})")
    lines.append(f"\tby {hostname} (Petrel) with {origin.protocol} id {queue_id}")
    if for_rcpt is not None:
        lines.append(f"\tfor <{for_rcpt}>")
    lines[-1] += f"; {rfc5322_date(when)}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
