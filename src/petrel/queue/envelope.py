"""The envelope: everything about a queued message except its bytes.

It travels as compact JSON with sorted keys inside the spool file (immutable)
and, for the per-recipient delivery state, in the spool's state file. Reading
checks every field's type, so a damaged or foreign file fails loudly here
instead of somewhere deep in delivery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "BODY_TYPES",
    "DEFERRED",
    "DELIVERED",
    "FAILED",
    "FINAL_STATES",
    "PENDING",
    "STATES",
    "Envelope",
    "Recipient",
]

PENDING = "pending"
DELIVERED = "delivered"
DEFERRED = "deferred"
FAILED = "failed"
STATES = frozenset({PENDING, DELIVERED, DEFERRED, FAILED})
FINAL_STATES = frozenset({DELIVERED, FAILED})
BODY_TYPES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})
_RET_VALUES = frozenset({None, "FULL", "HDRS"})

_REQUIRED: Any = object()


def _get(
    data: Mapping[str, Any], key: str, kinds: tuple[type, ...], default: Any = _REQUIRED
) -> Any:
    """Return data[key] if it has one of `kinds` (bool is not an int here), else ValueError."""
    if key not in data:
        if default is _REQUIRED:
            raise ValueError(f"envelope: missing field {key!r}")
        return default
    value = data[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"envelope: field {key!r} has the wrong type: {value!r}")
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _choice(value: Any, allowed: frozenset[Any], key: str) -> Any:
    if value not in allowed:
        raise ValueError(f"envelope: field {key!r} has an unknown value: {value!r}")
    return value


@dataclass
class Recipient:
    """One forward path and where its delivery stands."""

    address: str
    orcpt: str | None = None
    notify: tuple[str, ...] | None = None
    state: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    # For the DSN (RFC 3464): what the last attempt found out, and what was reported.
    status: str | None = None  # RFC 3463 code of the last attempt
    diagnostic: str | None = None  # "smtp; 550 5.1.1 ..."
    remote_mta: str | None = None  # "dns; mx.example.org"
    last_attempt: float | None = None
    delay_notified: bool = False  # a delay DSN went out already (one per recipient)
    relayed: bool = False  # delivered to a peer without DSN support

    @property
    def final(self) -> bool:
        """True once nothing more will be tried for this recipient."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        # Shallow by hand: dataclasses.asdict deep-copies and costs ~10x more.
        return {name: getattr(self, name) for name in _RECIPIENT_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipient:
        notify = _get(data, "notify", (list, tuple, type(None)), None)
        if notify is not None:
            if not all(isinstance(n, str) for n in notify):
                raise ValueError(f"envelope: field 'notify' has the wrong type: {notify!r}")
            notify = tuple(notify)
        return cls(
            address=_get(data, "address", (str,)),
            orcpt=_get(data, "orcpt", (str, type(None)), None),
            notify=notify,
            state=_choice(_get(data, "state", (str,), PENDING), STATES, "state"),
            attempts=_get(data, "attempts", (int,), 0),
            next_attempt=float(_get(data, "next_attempt", (int, float), 0.0)),
            last_error=_get(data, "last_error", (str, type(None)), None),
            status=_get(data, "status", (str, type(None)), None),
            diagnostic=_get(data, "diagnostic", (str, type(None)), None),
            remote_mta=_get(data, "remote_mta", (str, type(None)), None),
            last_attempt=_opt_float(_get(data, "last_attempt", (int, float, type(None)), None)),
            delay_notified=_get(data, "delay_notified", (bool,), False),
            relayed=_get(data, "relayed", (bool,), False),
        )


@dataclass
class Envelope:
    """Sender, recipients and the ESMTP facts of one accepted message."""

    queue_id: str
    sender: str
    recipients: list[Recipient]
    received_at: float
    body: str = "7BIT"
    smtputf8: bool = False
    size: int | None = None
    ret: str | None = None
    envid: str | None = None
    by: tuple[int, str] | None = None
    auth: str | None = None
    client_ip: str = ""
    client_helo: str = ""
    client_rdns: str | None = None
    protocol: str = "ESMTP"
    auth_user: str | None = None
    hold: bool = False
    notice: str | None = None  # set on Petrel's own DSNs: "dsn" or "double-bounce"
    # DMARC p=quarantine (or a pct-sampled reject) at intake: local copies go to the
    # mailbox's Junk folder, also after a restart.
    junk: bool = False

    @property
    def all_final(self) -> bool:
        """True when every recipient is delivered or failed: the message can leave the queue."""
        return all(r.final for r in self.recipients)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _ENVELOPE_FIELDS}
        data["recipients"] = [r.to_dict() for r in self.recipients]
        return data

    def to_json(self) -> str:
        """Compact JSON with sorted keys; non-ASCII is escaped, so any str survives."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        by = _get(data, "by", (list, tuple, type(None)), None)
        if by is not None:
            if len(by) != 2 or type(by[0]) is not int or not isinstance(by[1], str):
                raise ValueError(f"envelope: field 'by' has the wrong type: {by!r}")
            by = (by[0], by[1])
        recipients = _get(data, "recipients", (list,))
        if not all(isinstance(r, Mapping) for r in recipients):
            raise ValueError("envelope: field 'recipients' must be a list of objects")
        return cls(
            queue_id=_get(data, "queue_id", (str,)),
            sender=_get(data, "sender", (str,)),
            recipients=[Recipient.from_dict(r) for r in recipients],
            received_at=float(_get(data, "received_at", (int, float))),
            body=_choice(_get(data, "body", (str,), "7BIT"), BODY_TYPES, "body"),
            smtputf8=_get(data, "smtputf8", (bool,), False),
            size=_get(data, "size", (int, type(None)), None),
            ret=_choice(_get(data, "ret", (str, type(None)), None), _RET_VALUES, "ret"),
            envid=_get(data, "envid", (str, type(None)), None),
            by=by,
            auth=_get(data, "auth", (str, type(None)), None),
            client_ip=_get(data, "client_ip", (str,), ""),
            client_helo=_get(data, "client_helo", (str,), ""),
            client_rdns=_get(data, "client_rdns", (str, type(None)), None),
            protocol=_get(data, "protocol", (str,), "ESMTP"),
            auth_user=_get(data, "auth_user", (str, type(None)), None),
            hold=_get(data, "hold", (bool,), False),
            notice=_get(data, "notice", (str, type(None)), None),
            junk=_get(data, "junk", (bool,), False),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        """Parse `to_json` output; ValueError (json errors included) if it does not check out."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("envelope: JSON is not an object")
        return cls.from_dict(data)


_RECIPIENT_FIELDS = tuple(f.name for f in fields(Recipient))
_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
