"""The control socket: ``petrel queue …`` talking to the running server.

A unix socket at ``<data_dir>/control/petrel.sock`` (directory 0700, socket
0600, and the peer's uid is checked too): only the owner of the spool may
change it. The protocol is one JSON object per line each way, e.g.
``{"op": "hold", "id": "1K0V8G4A2SAQFN"}`` → ``{"ok": true, "changed": true}``;
operations are those of `petrel.queue.admin.execute`, plus ``etrn`` for worker
processes (``{"op": "etrn", "node": "example.org"}`` → ``{"ok": true, "code": 251,
"status": "2.0.0", "lines": [...]}``, the queue manager's own reply: `ask_etrn`), and
``status`` for `petrel status` (``{"op": "status"}`` → ``{"ok": true, "status": {...}}``,
what `petrel.app` reports: pid, uptime, listeners, workers, queue counts, counters,
last errors).
Requests run on the event loop, in the queue manager, so its memory and the spool stay
consistent.

A socket path longer than ``sun_path`` allows (108 bytes) is reached through
``/proc/self/fd/<dir fd>/``, so a deep data_dir still works on Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from petrel import smtp
from petrel.fsutil import ensure_dir, open_dir, unlink_quietly
from petrel.log import log_event
from petrel.queue.admin import QueueControl, execute

__all__ = [
    "ETRN_TIMEOUT",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "ask_etrn",
    "control_path",
]

log = logging.getLogger("petrel.control")

SOCKET_NAME = "petrel.sock"
_LINE_LIMIT = 64 * 1024  # a request is a short JSON object; anything longer is refused
_SUN_PATH_MAX = 107  # bytes, leaving room for the terminating NUL
ETRN_TIMEOUT = 2.0  # a worker's ETRN waits this long for the parent's answer


def control_path(data_dir: Path) -> Path:
    return data_dir / "control" / SOCKET_NAME


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """A name for bind/connect that fits ``sun_path``, however deep `path` is."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = open_dir(path.parent)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_uid(sock: Any) -> int | None:
    """The connecting process's uid (SO_PEERCRED), or None where it cannot be read."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    uid: int = struct.unpack("3i", creds)[1]
    return uid


class ControlError(Exception):
    """The control socket exists but cannot be used: the CLI must not fall back to files."""


class ControlServer:
    """Serves `execute` requests on the control socket for the running queue manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._control: QueueControl | None = None
        self._etrn: Callable[[str], smtp.Reply] | None = None
        self._status: Callable[[], dict[str, Any]] | None = None

    def bind(self) -> bool:
        """Claim the socket before spool recovery; False if another live server owns it.

        Bound early, the socket already marks the spool as in use while recovery
        runs: a ``petrel queue`` started then waits for the answer instead of
        changing files behind the starting server's back.
        """
        directory = self.path.parent
        ensure_dir(directory)
        st = os.lstat(directory)
        if st.st_uid != os.getuid():
            raise PermissionError(f"{directory} belongs to uid {st.st_uid}, not to us")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(directory, 0o700)
        if os.path.lexists(self.path):
            if ControlClient(self.path, timeout=2.0).alive():
                log_event(log, "control-busy", logging.WARNING, path=str(self.path))
                return False
            unlink_quietly(self.path)  # left by a server that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _addressable(self.path) as name:
                sock.bind(name)
            os.chmod(self.path, 0o600)  # the 0700 directory guards the moment before this
            sock.listen(16)
        except BaseException:
            sock.close()
            unlink_quietly(self.path)
            raise
        self._sock = sock
        return True

    async def start(
        self,
        control: QueueControl,
        etrn: Callable[[str], smtp.Reply] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Answer requests (queued since `bind`) with `control`, the running queue manager.

        ``etrn`` (the manager's) answers workers' ETRN requests; without it they are refused.
        ``status`` answers ``petrel status``; without it that is refused too.
        """
        if self._sock is None:
            return
        self._control = control
        self._etrn = etrn
        self._status = status
        self._sock.setblocking(False)
        self._server = await asyncio.start_unix_server(
            self._serve_client, sock=self._sock, limit=_LINE_LIMIT
        )
        log_event(log, "control-listening", path=str(self.path))

    async def close(self) -> None:
        """Stop accepting, drop open connections and remove the socket file."""
        if self._sock is None:
            return  # never bound: the socket file, if any, is another server's
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self._sock.close()
        self._sock = None
        unlink_quietly(self.path)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        uid = _peer_uid(writer.get_extra_info("socket"))
        if uid is not None and uid not in (0, os.getuid()):
            log_event(log, "control-refused", logging.WARNING, uid=uid)
            writer.close()
            return
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                writer.write(json.dumps(self._answer(line)).encode("ascii") + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: a line beyond the limit
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return {"ok": False, "error": "bad-request", "message": "not a JSON object"}
        try:
            assert self._control is not None
            if request.get("op") == "etrn":
                return self._answer_etrn(request.get("node"))
            if request.get("op") == "status":
                if self._status is None:
                    return {"ok": False, "error": "bad-request", "message": "no status here"}
                return {"ok": True, "status": self._status()}
            response = execute(self._control, request)
        except Exception as exc:  # a bug must not take the server down with it
            log.exception("control request failed")
            return {"ok": False, "error": "failed", "message": f"internal error: {exc}"}
        if request.get("op") not in ("list", "show"):
            log_event(log, "control", op=request.get("op"), id=request.get("id"), ok=response["ok"])
        return response

    def _answer_etrn(self, node: Any) -> dict[str, Any]:
        """A worker's client said ETRN: the queue manager's answer, as the reply's parts."""
        if self._etrn is None:
            return {"ok": False, "error": "bad-request", "message": "etrn is not served here"}
        if not isinstance(node, str) or not node:
            return {"ok": False, "error": "bad-request", "message": "etrn: a node is required"}
        reply = self._etrn(node)
        log_event(log, "etrn", node=node, reply=reply.code)
        return {"ok": True, "code": reply.code, "status": reply.status, "lines": list(reply.lines)}


def ask_etrn(path: Path, node: str, timeout: float = ETRN_TIMEOUT) -> smtp.Reply:
    """ETRN in a worker process: the parent's queue manager answers over the control socket.

    So a client gets the same 250 or 251 as from a single process. Blocking, but one
    local round trip to a server that answers from memory; no answer within ``timeout``
    (or none at all) is ``458 4.0.0``, RFC 1985's "unable to queue".
    """
    unable = smtp.reply(458, "4.0.0", f"Unable to queue messages for node {node}")
    client = ControlClient(path, timeout=timeout)
    try:
        if not client.connect():
            return unable
        response = client.request("etrn", node=node)
    except ControlError:
        return unable
    finally:
        client.close()
    code, status, lines = response.get("code"), response.get("status"), response.get("lines")
    if (
        response.get("ok") is not True
        or not isinstance(code, int)
        or not (status is None or isinstance(status, str))
        or not isinstance(lines, list)
        or not all(isinstance(line, str) for line in lines)
    ):
        return unable
    try:
        return smtp.Reply(code, tuple(lines), status)
    except smtp.LocalProtocolError:  # not a reply we could send
        return unable


class ControlClient:
    """The command line's end: blocking, one request per call, over one connection."""

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> bool:
        """True when a server answers; False when none runs (no socket, or a stale one).

        Any other failure (permission, a hung server) raises ControlError: working
        on the files behind a live server's back would undo its work.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with _addressable(self.path) as name:
                sock.connect(name)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return False
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENOTDIR:
                return False
            raise ControlError(f"{self.path}: {exc.strerror or exc}") from None
        self._sock = sock
        return True

    def alive(self) -> bool:
        """Whether a server is listening on the socket (used to refuse a second server)."""
        try:
            up = self.connect()
        except ControlError:
            return True
        self.close()
        return up

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        if self._sock is None:
            raise ControlError("not connected")
        message = {"op": op, **{k: v for k, v in args.items() if v is not None}}
        try:
            self._sock.sendall(json.dumps(message).encode("ascii") + b"\n")
            while b"\n" not in self._buffer:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ControlError("the server closed the control connection")
                self._buffer += chunk
        except TimeoutError:
            raise ControlError(f"no answer on {self.path} within {self.timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"{self.path}: {exc.strerror or exc}") from None
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            response = json.loads(line)
        except ValueError:
            raise ControlError("the server sent something that is not JSON") from None
        if not isinstance(response, dict):
            raise ControlError("the server sent something that is not a JSON object")
        return response

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
