"""Queue administration shared by the running server and the stopped spool.

``petrel queue …`` asks the running server over its control socket, so that the
queue manager's memory and the spool never disagree; with no server it works on
the spool files directly. Both sides answer the same requests with the same JSON
shapes through `execute`, so the command line prints one format either way.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from petrel.log import log_event
from petrel.queue.envelope import Envelope
from petrel.queue.ids import is_valid_queue_id
from petrel.queue.spool import CorruptMessageError, Spool
from petrel.queue.store import QueueStore

__all__ = [
    "LIST_HEADER",
    "QueueControl",
    "SpoolAdmin",
    "UnknownMessageError",
    "describe_envelope",
    "execute",
    "format_list",
    "format_show",
    "matches_domain",
    "message_info",
    "read_headers",
    "spool_admin",
]

log = logging.getLogger("petrel.admin")

# Postfix's mailq layout, its id column widened from 11 to 15: a 14-character id and
# its flag. Recipients are indented one column less than the sender, as in Postfix.
_ID_WIDTH = 15
LIST_HEADER = f"{'-Queue ID-':<{_ID_WIDTH}} --Size-- ----Arrival Time---- -Sender/Recipient-------"
_INDENT = " " * (_ID_WIDTH + 30)  # 45


class UnknownMessageError(LookupError):
    """No message with that id is in the queue (or the id is not an id at all)."""


class QueueControl(Protocol):
    """What `execute` needs: the queue manager's `delivery.admin.LiveAdmin` when the
    server runs, `SpoolAdmin` when not."""

    def queue_ids(self) -> list[str]: ...
    def snapshot(self) -> list[dict[str, Any]]: ...
    def describe(self, queue_id: str) -> dict[str, Any]: ...
    def flush(self, domain: str | None = None) -> int: ...
    def delete(self, queue_id: str) -> bool: ...
    def hold(self, queue_id: str) -> bool: ...
    def release(self, queue_id: str) -> bool: ...


# -- data shared by both sides --------------------------------------------------------


def message_info(envelope: Envelope, size: int | None, *, active: bool = False) -> dict[str, Any]:
    """A JSON-ready summary for `list`; `active` means a delivery attempt is under way."""
    return {
        "queue_id": envelope.queue_id,
        "sender": envelope.sender,
        "received_at": envelope.received_at,
        "size": size,
        "hold": envelope.hold,
        "active": active,
        "recipients": [r.to_dict() for r in envelope.recipients],
    }


def describe_envelope(
    envelope: Envelope, size: int | None, headers: str, *, active: bool
) -> dict[str, Any]:
    """Everything `show` prints: the whole envelope, the size and the message headers."""
    info = envelope.to_dict()
    info.update(size=size, active=active, headers=headers)
    return info


def read_headers(spool: QueueStore, queue_id: str) -> str:
    """The header section of a queued message (up to the blank line), LF line ends."""
    head = spool.read_header(queue_id)
    if head.endswith(b"\r\n\r\n"):
        head = head[:-2]
    return head.replace(b"\r\n", b"\n").decode("utf-8", errors="replace")


def matches_domain(address: str, domain: str | None) -> bool:
    """Select like ETRN: ``example.org`` exactly, ``@example.org`` with its subdomains."""
    if domain is None:
        return True
    wanted = domain.lstrip("@").lower()
    have = address.rpartition("@")[2].lower()
    return have == wanted or (domain.startswith("@") and have.endswith("." + wanted))


def execute(control: QueueControl, request: Mapping[str, Any]) -> dict[str, Any]:
    """Run one control request; the reply has ``ok`` and either results or an ``error``.

    Errors are ``unknown`` (no such message) and ``failed`` (a damaged or
    unreadable file), both exit status 1, and ``bad-request`` (exit status 2),
    each with a human ``message``.
    """
    op = request.get("op")
    queue_id = request.get("id")
    try:
        if op == "list":
            return {"ok": True, "messages": control.snapshot()}
        if op == "flush":
            domain = request.get("domain")
            if domain is not None and (not isinstance(domain, str) or not domain.strip("@")):
                return _bad("flush: the domain must be a non-empty string")
            return {"ok": True, "count": control.flush(domain)}
        if op not in ("show", "delete", "hold", "release"):
            return _bad(f"unknown operation {op!r}")
        if not isinstance(queue_id, str):
            return _bad(f"{op}: a queue id is required")
        if op == "show":
            return {"ok": True, "message": control.describe(queue_id)}
        if op == "delete":
            ids = control.queue_ids() if queue_id == "ALL" else [queue_id]
            removed: list[str] = []
            pending: list[str] = []
            for one in ids:
                try:
                    (removed if control.delete(one) else pending).append(one)
                except UnknownMessageError:
                    if queue_id != "ALL":
                        raise  # with ALL it just left the queue by itself
            return {"ok": True, "removed": removed, "pending": pending}
        if op == "hold":
            return {"ok": True, "changed": control.hold(queue_id)}
        return {"ok": True, "changed": control.release(queue_id)}
    except UnknownMessageError as exc:
        return {"ok": False, "error": "unknown", "message": str(exc)}
    except CorruptMessageError as exc:
        return {"ok": False, "error": "failed", "message": f"{queue_id}: damaged: {exc}"}
    except OSError as exc:
        return {"ok": False, "error": "failed", "message": f"{op}: {exc}"}


def _bad(message: str) -> dict[str, Any]:
    return {"ok": False, "error": "bad-request", "message": message}


# -- the stopped spool --------------------------------------------------------------------


class SpoolAdmin:
    """`QueueControl` on the files of a spool no server is running on.

    Every change goes through `Spool.save_state` or `Spool.finish`, the same
    atomic steps the queue manager uses, so the next ``petrel serve`` recovers
    exactly what the operator left.
    """

    def __init__(self, spool: QueueStore) -> None:
        self.spool = spool

    def queue_ids(self) -> list[str]:
        try:
            return self.spool.list_ids()
        except FileNotFoundError:  # no spool yet: nothing was ever queued
            return []

    def _load(self, queue_id: str) -> Envelope:
        if not is_valid_queue_id(queue_id):
            raise UnknownMessageError(f"{queue_id}: no such message")
        try:
            return self.spool.load(queue_id)
        except FileNotFoundError:
            raise UnknownMessageError(f"{queue_id}: no such message") from None

    def _size(self, queue_id: str) -> int | None:
        try:
            return self.spool.body_size(queue_id)
        except (OSError, CorruptMessageError):
            return None

    def snapshot(self) -> list[dict[str, Any]]:
        infos = []
        for queue_id in self.queue_ids():
            try:
                envelope = self.spool.load(queue_id)
            except (OSError, CorruptMessageError):
                continue  # gone meanwhile, or damaged: start-up recovery quarantines it
            infos.append(message_info(envelope, self._size(queue_id)))
        infos.sort(key=lambda i: (i["received_at"], i["queue_id"]))
        return infos

    def describe(self, queue_id: str) -> dict[str, Any]:
        envelope = self._load(queue_id)
        headers = read_headers(self.spool, queue_id)
        return describe_envelope(envelope, self._size(queue_id), headers, active=False)

    def flush(self, domain: str | None = None) -> int:
        """Make every open recipient due now; the next start tries them at once."""
        count = 0
        for queue_id in self.queue_ids():
            try:
                envelope = self.spool.load(queue_id)
            except (OSError, CorruptMessageError):
                continue
            if envelope.hold:
                continue
            wanted = [
                r for r in envelope.recipients if not r.final and matches_domain(r.address, domain)
            ]
            if not wanted:
                continue
            for recipient in wanted:
                recipient.next_attempt = 0.0
            self.spool.save_state(envelope)
            count += 1
        return count

    def delete(self, queue_id: str) -> bool:
        self._load(queue_id)
        self.spool.finish(queue_id)
        log_event(log, "deleted", queue_id=queue_id, by="operator")
        return True

    def hold(self, queue_id: str) -> bool:
        return self._set_hold(queue_id, True)

    def release(self, queue_id: str) -> bool:
        return self._set_hold(queue_id, False)

    def _set_hold(self, queue_id: str, hold: bool) -> bool:
        envelope = self._load(queue_id)
        if envelope.hold == hold:
            return False
        envelope.hold = hold
        self.spool.save_state(envelope)
        return True


# -- output -----------------------------------------------------------------------------


def _mailq_time(when: float) -> str:
    """``Sun Nov 22 09:30:20`` in local time, the day space-padded like Postfix's mailq."""
    t = time.localtime(when)
    return f"{time.strftime('%a %b', t)} {t.tm_mday:2d} {time.strftime('%H:%M:%S', t)}"


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def format_list(messages: list[dict[str, Any]], data_dir: Path | None = None) -> str:
    """The queue in Postfix's mailq layout: ``!`` marks held mail, ``*`` mail being tried.

    An empty queue names ``data_dir`` when given: an empty answer from the wrong spool
    (another ``--config``, the working directory) should not pass for a real one.
    """
    if not messages:
        return (
            "Mail queue is empty\n" if data_dir is None else f"Mail queue is empty ({data_dir})\n"
        )
    lines = [LIST_HEADER]
    total = 0
    for m in messages:
        size = m["size"] if m["size"] is not None else 0
        total += size
        flag = "!" if m["hold"] else "*" if m["active"] else ""
        sender = m["sender"] or "MAILER-DAEMON"
        arrival = _mailq_time(m["received_at"])
        lines.append(f"{m['queue_id'] + flag:<{_ID_WIDTH}} {size:>8} {arrival:<20} {sender}")
        lease = m.get("lease")  # a shared queue: which node's attempt holds it
        if lease:
            lines.append(f"{_INDENT}(leased by {lease['node']} until {_clock(lease['until'])})")
        last_error: str | None = None
        for r in m["recipients"]:
            if r["state"] in ("delivered", "failed"):
                continue
            if r["last_error"] and r["last_error"] != last_error:
                lines.append(f"{_INDENT}({r['last_error']})")
            last_error = r["last_error"]
            lines.append(f"{_INDENT}{r['address']}")
        lines.append("")
    count = len(messages)
    kbytes = (total + 1023) // 1024
    lines.append(f"-- {kbytes} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return "\n".join(lines) + "\n"


def format_show(info: Mapping[str, Any]) -> str:
    """One message: its envelope, each recipient's state, then its headers."""
    status = "on hold" if info["hold"] else "being delivered" if info["active"] else "queued"
    client = info["client_helo"] or "?"
    if info["client_ip"]:
        client += f" ({info['client_rdns'] or 'unknown'} [{info['client_ip']}])"
    rows = [
        ("Queue ID", info["queue_id"]),
        ("Status", status),
        ("Arrival", email.utils.formatdate(info["received_at"], localtime=True)),
        ("Size", str(info["size"]) if info["size"] is not None else "?"),
        ("Sender", f"<{info['sender']}>"),
        ("Client", client),
        ("Protocol", info["protocol"]),
        ("Body", info["body"] + (" SMTPUTF8" if info["smtputf8"] else "")),
    ]
    optional = [
        ("Auth user", info.get("auth_user")),
        ("MAIL AUTH", info.get("auth")),
        ("ENVID", info.get("envid")),
        ("RET", info.get("ret")),
        ("BY", "{};{}".format(*info["by"]) if info.get("by") else None),
    ]
    lease = info.get("lease")
    if lease:
        optional.append(("Lease", f"{lease['node']} until {_clock(lease['until'])}"))
    rows.extend((k, v) for k, v in optional if v)
    out = [f"{key + ':':<11}{value}" for key, value in rows]
    out.append("Recipients:")
    for r in info["recipients"]:
        attempts = r["attempts"]
        detail = f"{r['state']}, {attempts} attempt{'s' if attempts != 1 else ''}"
        if r["state"] in ("pending", "deferred") and r["next_attempt"]:
            detail += f", next {_mailq_time(r['next_attempt'])}"
        out.append(f"  {r['address']} ({detail})")
        if r.get("orcpt"):
            out.append(f"    ORCPT {r['orcpt']}")
        if r["last_error"]:
            out.append(f"    ({r['last_error']})")
    out.append("Headers:")
    return "\n".join(out) + "\n" + str(info["headers"]).rstrip("\n") + "\n"


def spool_admin(data_dir: Path) -> SpoolAdmin:
    """The offline side for a data directory (the spool is not opened: no threads, no writes)."""
    return SpoolAdmin(Spool(data_dir / "queue"))
