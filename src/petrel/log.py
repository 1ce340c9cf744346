"""One-line structured logs: ``key=value`` text for people, JSON for machines.

Events carry their fields on the record as ``petrel_fields``; `log_event` checks the
level first, so a disabled debug event in the session hot path costs one call.

Lines go to one target (``[log] target``): stderr; syslog through ``/dev/log``
(facility mail, tag ``petrel[<pid>]``, no timestamp of ours: syslog adds it); or a
file opened for appending, reopened at the first line after SIGUSR1 (logrotate's
postrotate). ``PETREL_SYSLOG_SOCKET`` names another syslog socket: a testing hook.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import logging.handlers
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "FORMATS",
    "LEVELS",
    "SYSLOG_SOCKET",
    "SYSLOG_SOCKET_ENV",
    "TARGETS",
    "LogSetupError",
    "log_event",
    "request_reopen",
    "set_process_field",
    "setup_logging",
]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("text", "json")
TARGETS = ("stderr", "syslog", "file")
SYSLOG_SOCKET = "/dev/log"
SYSLOG_SOCKET_ENV = "PETREL_SYSLOG_SOCKET"  # testing hook: another socket than /dev/log

log = logging.getLogger("petrel.log")


class LogSetupError(OSError):
    """The log file cannot be opened: one line for the operator, naming ``log.file``."""


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


def setup_logging(
    fmt: str = "text", level: str = "info", target: str = "stderr", file: Path | None = None
) -> None:
    """Send every logger's records to `target` as one line each, replacing earlier setups.

    ``target = "file"`` needs `file`; it raises `LogSetupError` if it cannot be opened.
    ``"syslog"`` without a socket to talk to falls back to stderr with one warning line.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if target not in TARGETS:
        raise ValueError(f"log target must be one of {', '.join(TARGETS)}, got {target!r}")
    # No line shows the caller's file, the thread or the process, so records need not
    # collect them (the logging HOWTO's "Optimization" flags): a getpid(2) and a stack
    # walk less for every line the session hot path writes.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    fallback: str | None = None
    handler: logging.Handler
    if target == "file":
        if file is None:
            raise ValueError("log target file needs a file")
        handler = _ReopeningFileHandler(file)
    elif target == "syslog":
        address = os.environ.get(SYSLOG_SOCKET_ENV) or SYSLOG_SOCKET
        syslog = _SyslogHandler(address)
        if syslog.socktype is None:  # SysLogHandler swallows the failed connect
            syslog.close()
            handler = _StderrHandler()
            fallback = address
        else:
            handler = syslog
    else:
        handler = _StderrHandler()
    stamped = not isinstance(handler, _SyslogHandler)
    handler.setFormatter(_JsonFormatter(stamped) if fmt == "json" else _TextFormatter(stamped))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PetrelHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # logrotate's postrotate: the file target reopens, the others ignore it. ValueError:
    # not the main thread (tests), where no signal handler can be set.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGUSR1, lambda signum, frame: request_reopen())
    if fallback is not None:
        log_event(
            log,
            "syslog-unavailable",
            level=logging.WARNING,
            socket=fallback,
            effect="logging to stderr",
        )


def request_reopen() -> None:
    """SIGUSR1: the log file is reopened (by name) before its next line is written.

    Only a flag is set, so this is safe in a signal handler and from any thread.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _ReopeningFileHandler):
            handler.reopen_requested = True


class _PetrelHandler(logging.Handler):
    """Marks the handlers `setup_logging` installs; a failed write is one stderr line.

    logging's own handleError prints a traceback for every failed line; a full disk or
    a syslog daemon restart would flood stderr with them.
    """

    _write_failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        exc = sys.exc_info()[1]
        if self._write_failed:
            return
        self._write_failed = True
        with contextlib.suppress(Exception):
            sys.stderr.write(f"petrel: cannot write a log line ({self.where}): {exc}\n")

    @property
    def where(self) -> str:
        return "stderr"


class _StderrHandler(_PetrelHandler, logging.StreamHandler[TextIO]):
    """Looks up sys.stderr at each write, so later redirection (tests, daemons) is honoured."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]  # StreamHandler has an attribute
        return sys.stderr


class _ReopeningFileHandler(_PetrelHandler, logging.StreamHandler[TextIO]):
    """Appends (O_APPEND: every process of a ``workers`` server shares the file); after
    `request_reopen` the next line first opens the path again, so after logrotate renamed
    the file, lines go to a new file under the old name. A failed reopen keeps the old
    file and says so once on stderr.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reopen_requested = False
        try:
            stream = self._open()
        except OSError as exc:
            raise LogSetupError(f"log.file: cannot open {path}: {exc.strerror or exc}") from None
        logging.StreamHandler.__init__(self, stream)

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    @property
    def where(self) -> str:
        return str(self.path)

    def emit(self, record: logging.LogRecord) -> None:
        if self.reopen_requested:
            self._reopen()
        super().emit(record)

    def _reopen(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # set by Handler.__init__
            if not self.reopen_requested:
                return
            self.reopen_requested = False
            try:
                stream = self._open()
            except OSError as exc:
                with contextlib.suppress(Exception):
                    sys.stderr.write(
                        f"petrel: log.file: cannot reopen {self.path}: {exc.strerror or exc};"
                        " still writing to the file opened before\n"
                    )
                return
            old, self.stream = self.stream, stream
            self._write_failed = False
            with contextlib.suppress(OSError):
                old.close()

    def close(self) -> None:
        with self.lock, contextlib.suppress(OSError):  # type: ignore[union-attr]
            self.stream.close()
        super().close()


class _SyslogHandler(_PetrelHandler, logging.handlers.SysLogHandler):
    """Facility mail, ``petrel[<pid>]: `` before each line, as syslog(3) writes for Postfix
    (the pid is this process's: each worker tags its own lines)."""

    def __init__(self, address: str) -> None:
        logging.handlers.SysLogHandler.__init__(
            self, address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        self.address_text = address
        self.ident = f"petrel[{os.getpid()}]: "
        self.append_nul = False  # syslog(3) sends none

    @property
    def where(self) -> str:
        return f"syslog {self.address_text}"


class _PetrelFormatter(logging.Formatter):
    """Shared field extraction; subclasses only decide how a line is spelt.

    ``stamped=False`` (syslog) leaves the timestamp out: syslog adds its own.
    """

    def __init__(self, stamped: bool = True) -> None:
        super().__init__()
        self.stamped = stamped

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
        parts = [record.levelname.lower(), record.name]
        if self.stamped:
            parts.insert(0, self.timestamp(record))
        parts.extend(f"{k}={_text_value(v)}" for k, v in self.fields(record).items())
        return " ".join(parts)


class _JsonFormatter(_PetrelFormatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": self.timestamp(record)} if self.stamped else {}
        line["level"] = record.levelname.lower()
        line["logger"] = record.name
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
