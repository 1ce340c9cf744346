"""One-line structured logs on stderr: ``key=value`` text for people, JSON for machines.

Events carry their fields on the record as ``petrel_fields``; `log_event` checks the
level first, so a disabled debug event in the session hot path costs one call.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

__all__ = ["FORMATS", "LEVELS", "log_event", "set_process_field", "setup_logging"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("text", "json")

# Fields every line of this process carries (``worker=N`` in a worker process).
_process_fields: dict[str, Any] = {}

# Text values outside this set are quoted, so every line splits back into fields.
_BARE_VALUE = re.compile(r'[^\s\x00-\x1f\x7f"=\\]+')


def log_event(
    logger: logging.Logger, event: str, /, level: int = logging.INFO, **fields: Any
) -> None:
    """Log `event` with `fields` at `level` (INFO by default) as one structured line."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"petrel_fields": fields})


def set_process_field(key: str, value: Any) -> None:
    """Add ``key=value`` to every later line this process logs."""
    _process_fields[key] = value


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Send every logger's records to stderr as one line each, replacing earlier setups."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    # No line shows the caller's file, the thread or the process, so records need not
    # collect them (the logging HOWTO's "Optimization" flags): a getpid(2) and a stack
    # walk less for every line the session hot path writes.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _StderrHandler()
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Looks up sys.stderr at each write, so later redirection (tests, daemons) is honoured."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]  # StreamHandler has an attribute
        return sys.stderr


class _PetrelFormatter(logging.Formatter):
    """Shared field extraction; subclasses only decide how a line is spelt."""

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        petrel_fields: dict[str, Any] | None = getattr(record, "petrel_fields", None)
        if petrel_fields is None:
            fields: dict[str, Any] = {"msg": record.getMessage()}
        else:
            fields = {"event": record.msg, **petrel_fields}
        if _process_fields:
            fields.update(_process_fields)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return fields

    def timestamp(self, record: logging.LogRecord) -> str:
        return f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z"


class _TextFormatter(_PetrelFormatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [self.timestamp(record), record.levelname.lower(), record.name]
        parts.extend(f"{k}={_text_value(v)}" for k, v in self.fields(record).items())
        return " ".join(parts)


class _JsonFormatter(_PetrelFormatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for key, value in self.fields(record).items():
            line.setdefault(key, value)
        return json.dumps(line, ensure_ascii=False, default=str)


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    """ISO 8601 UTC up to the second: strftime once per second, not once per line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if _BARE_VALUE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)
