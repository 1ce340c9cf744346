"""The bench's own SMTP clients: one-client latency, idle sessions, one very large message."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common import LOOPBACK, tree_memory
from targets import RECIPIENT

SENDER = "sender@client.test"


class SmtpError(RuntimeError):
    """The server answered something the client did not expect."""


class LineClient:
    """A blocking client that reads whole (multi-line) replies off a plain socket."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def reply(self) -> bytes:
        """Return the code of the next complete reply (after its last line)."""
        while True:
            end = self.buffer.find(b"\r\n")
            while end >= 0:
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                if len(line) < 4 or line[3:4] != b"-":
                    return line[:3]
                end = self.buffer.find(b"\r\n")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SmtpError("connection closed")
            self.buffer += chunk

    def expect(self, data: bytes | None, code: bytes) -> None:
        if data is not None:
            self.sock.sendall(data)
        got = self.reply()
        if got != code:
            raise SmtpError(f"expected {code!r}, got {got!r} after {data!r}")

    def close(self) -> None:
        self.sock.close()


def message(size: int) -> bytes:
    """Header and a body of about ``size`` octets in 78-octet lines, CRLF-terminated."""
    head = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, size // len(line))


STEPS = ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "dot")


def transaction(port: int, body: bytes) -> list[float]:
    """One message on a new connection, no pipelining.

    Returns the seconds each step took, from connect() to the greeting and then from each
    command to its reply (the last is the body and dot to the 250): their sum is the
    full transaction.
    """
    marks = [time.perf_counter()]
    client = LineClient(port)
    try:
        for data, code in (
            (None, b"220"),
            (b"EHLO client.test\r\n", b"250"),
            (f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250"),
            (f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"250"),
            (b"DATA\r\n", b"354"),
            (body + b".\r\n", b"250"),
        ):
            client.expect(data, code)
            marks.append(time.perf_counter())
        client.expect(b"QUIT\r\n", b"221")
    finally:
        client.close()
    return [b - a for a, b in itertools.pairwise(marks)]


def latencies(port: int, count: int) -> list[list[float]]:
    """``count`` sequential transactions of a 1 KB message, one client: steps of each."""
    body = message(1024)
    for _ in range(min(20, count)):  # warm-up, not recorded
        transaction(port, body)
    return [transaction(port, body) for _ in range(count)]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class IdleResult:
    """What the idle-session probe saw."""

    asked: int
    held: int
    noop_ok: int
    rss_kib: int
    pss_kib: int
    seconds: float


async def _idle_sessions(
    port: int, count: int, measure: Callable[[], tuple[int, int]], settle: float, timeout: float
) -> IdleResult:
    start = time.monotonic()
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    gate = asyncio.Semaphore(200)  # handshakes in flight, so the backlog never overflows

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise SmtpError("closed")
            if len(line) < 4 or line[3:4] != b"-":
                return line[:3]

    async def open_one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, port), timeout
                )
            except (OSError, TimeoutError):
                return
            try:
                if await asyncio.wait_for(reply(reader), timeout) != b"220":
                    raise SmtpError("no greeting")
                writer.write(b"EHLO client.test\r\n")
                if await asyncio.wait_for(reply(reader), timeout) != b"250":
                    raise SmtpError("EHLO refused")
            except (OSError, TimeoutError, SmtpError):
                writer.close()
                return
            readers.append(reader)
            writers.append(writer)

    async def noop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            writer.write(b"NOOP\r\n")
            return await asyncio.wait_for(reply(reader), timeout) == b"250"
        except (OSError, TimeoutError, SmtpError):
            return False

    rss0, pss0 = measure()
    try:
        await asyncio.gather(*(open_one() for _ in range(count)))
        await asyncio.sleep(settle)
        rss1, pss1 = measure()
        answers = await asyncio.gather(*(noop(r, w) for r, w in zip(readers, writers, strict=True)))
    finally:
        for writer in writers:
            writer.close()
    held = len(writers)
    return IdleResult(
        asked=count,
        held=held,
        noop_ok=sum(answers),
        rss_kib=rss1 - rss0,
        pss_kib=pss1 - pss0,
        seconds=time.monotonic() - start,
    )


def idle_sessions(
    port: int, count: int, pids: Callable[[], list[int]], timeout: float = 20.0
) -> IdleResult:
    """Hold ``count`` sessions after EHLO; memory delta of the server's processes; NOOP each."""
    return asyncio.run(
        _idle_sessions(port, count, lambda: tree_memory(pids()), settle=1.0, timeout=timeout)
    )


@dataclass
class BigResult:
    """What the large-message probe saw."""

    size: int
    accepted: bool
    rss_growth_kib: int
    seconds: float


def big_message(
    port: int, size: int, pids: Callable[[], list[int]], delivered: Callable[[], bool]
) -> BigResult:
    """Send one ``size``-octet message; peak RSS growth of the server until it is delivered."""
    base = tree_memory(pids())[0]
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_memory(pids())[0])
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    accepted = False
    try:
        client = LineClient(port, timeout=120)
        try:
            client.expect(None, b"220")
            client.expect(b"EHLO client.test\r\n", b"250")
            client.expect(f"MAIL FROM:<{SENDER}> SIZE={size}\r\n".encode(), b"250")
            client.expect(f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"250")
            client.expect(b"DATA\r\n", b"354")
            body = message(size)
            view = memoryview(body)
            for offset in range(0, len(body), 1 << 20):
                client.sock.sendall(view[offset : offset + (1 << 20)])
            del view, body
            client.expect(b".\r\n", b"250")
            accepted = True
            client.expect(b"QUIT\r\n", b"221")
        finally:
            client.close()
        deadline = time.monotonic() + 120
        while not delivered() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        done.set()
        sampler.join(timeout=5)
    return BigResult(size, accepted, peak - base, time.monotonic() - start)
