"""What ``petrel status`` shows: counters, recent errors, and the report's two spellings.

`ServerStats` lives in the ``petrel serve`` parent: "in" counts the messages its queue
manager took (committed by this process's sessions, picked up from `petrel sendmail`
or, with workers, from the workers' sessions through the pickup pipe, and its own DSN
notices); "out" counts recipients whose delivery ended (delivered or failed), with
deferrals apart. `ErrorLog` keeps the last few ERROR-level log records of the parent.
The report (`ServerStats.report`) is answered over the control socket (op ``status``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ERRORS_KEPT", "ErrorLog", "ServerStats", "format_status"]

ERRORS_KEPT = 10


class ErrorLog(logging.Handler):
    """A logging handler that remembers the last `ERRORS_KEPT` ERROR (and worse) records."""

    def __init__(self, keep: int = ERRORS_KEPT) -> None:
        super().__init__(logging.ERROR)
        self.records: deque[dict[str, Any]] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] | None = getattr(record, "petrel_fields", None)
            entry: dict[str, Any] = {
                "time": record.created,
                "level": record.levelname.lower(),
                "logger": record.name,
            }
            if fields is None:
                entry["message"] = record.getMessage()
            else:
                entry["event"] = str(record.msg)
                entry.update({k: _plain(v) for k, v in fields.items() if k not in entry})
            self.records.append(entry)
        except Exception:  # a handler must never raise into the code that logged
            self.handleError(record)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


@dataclass(slots=True)
class ServerStats:
    """Counters since start-up, bumped on the event loop by the queue manager."""

    started: float = field(default_factory=time.time)
    messages_in: int = 0
    delivered: int = 0
    failed: int = 0
    deferred: int = 0

    def outcome(self, event: str) -> None:
        """One recipient's attempt ended: ``delivered``, ``failed`` or ``deferred``."""
        if event == "delivered":
            self.delivered += 1
        elif event == "failed":
            self.failed += 1
        elif event == "deferred":
            self.deferred += 1

    def counters(self) -> dict[str, int]:
        return {
            "in": self.messages_in,
            "out": self.delivered + self.failed,
            "delivered": self.delivered,
            "failed": self.failed,
            "deferred": self.deferred,
        }


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_status(info: dict[str, Any], now: Callable[[], float] = time.time) -> str:
    """The human spelling of the ``status`` answer (``--json`` prints the answer itself)."""
    started = float(info.get("started", 0.0))
    lines = [
        f"petrel {info.get('version', '?')}, pid {info.get('pid', '?')},"
        f" up {_duration(info.get('uptime', now() - started))}"
        f" (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))})",
        f"data_dir:  {info.get('data_dir', '?')}",
    ]
    listeners = info.get("listeners") or []
    lines.append(
        "listeners: "
        + (", ".join(f"{item['address']} ({item['mode']})" for item in listeners) or "none")
    )
    workers = info.get("workers") or []
    if workers:
        pids = ", ".join(str(w["pid"]) if w.get("pid") else "restarting" for w in workers)
        lines.append(f"workers:   {len(workers)} ({pids})")
    else:
        lines.append("workers:   none (a single process)")
    queue = info.get("queue") or {}
    lines.append(
        f"queue:     {queue.get('total', 0)} messages"
        f" ({queue.get('queued', 0)} queued, {queue.get('active', 0)} active,"
        f" {queue.get('deferred', 0)} deferred, {queue.get('hold', 0)} held)"
    )
    if "leases" in queue:  # a shared queue: the counts are the cluster's
        leases = ", ".join(f"{node} {n}" for node, n in queue["leases"].items()) or "none"
        lines.append(f"cluster:   node {info.get('node', '?')}; leases held: {leases}")
    if "error" in queue:
        lines.append(f"queue:     unavailable: {queue['error']}")
    counts = info.get("messages") or {}
    lines.append(
        f"messages:  {counts.get('in', 0)} in, {counts.get('out', 0)} out"
        f" ({counts.get('delivered', 0)} delivered, {counts.get('failed', 0)} failed;"
        f" {counts.get('deferred', 0)} deferrals) since start"
    )
    errors = info.get("errors") or []
    if not errors:
        lines.append("errors:    none since start")
    else:
        lines.append(f"errors:    last {len(errors)}")
        for entry in errors:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry["time"])))
            rest = " ".join(
                f"{k}={v}" for k, v in entry.items() if k not in ("time", "level", "logger")
            )
            lines.append(f"  {when} {entry.get('logger', '')} {rest}")
    return "\n".join(lines)
