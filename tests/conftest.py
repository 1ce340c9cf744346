"""Fixtures that run the real ``petrel serve`` in a temporary directory.

Integration tests talk to it over loopback with clients nobody here wrote (smtplib,
aiosmtplib, swaks) or with raw sockets for byte-exact sessions. Every wait is a
bounded poll for an observable result, never a sleep that hopes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dns_server import DnsServer
from pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures: the private PostgreSQL)

HOSTNAME = "mx.petrel.test"
_LISTENING = re.compile(r"event=listening address=(\S+):(\d+) mode=(\w+)")


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


class Clock:
    """An injected clock that moves only when a test moves it (``clock.now += …``)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mount_point`` (made here), unmounted at the end.

    Needs root, as `make test` has in CI; the test is skipped where mount is refused.
    """
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


class PetrelServer:
    """One ``petrel serve`` process with its own config, data dir and log file."""

    def __init__(
        self,
        root: Path,
        extra_config: str = "",
        data_dir: Path | None = None,
        server_config: str = "",
    ) -> None:
        self.root = root
        self.server_config = server_config  # more keys of the [server] table
        self.data_dir = data_dir or root / "data"
        self.config_path = root / "petrel.toml"
        self.log_path = root / "petrel.log"
        self.stderr_path: Path | None = None  # else stdout and stderr go to log_path too
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.ports: dict[str, int] = {}  # first bound port of each listener mode
        self.python = sys.executable  # the interpreter (and env) `petrel` runs with
        self.env: dict[str, str] | None = None
        self.wrapper: list[str] = []  # a command `petrel serve` runs under (e.g. strace)

    def write_config(self) -> None:
        base = f"""
[server]
hostname = "{HOSTNAME}"
data_dir = "{self.data_dir}"
reverse_dns = false
{self.server_config}
[[listener]]
address = "127.0.0.1:0"
mode = "smtp"
"""
        if "[delivery]" not in self.extra_config:
            # No DNS in tests: a lookup would leave the machine. Remote domains without a
            # `hosts` entry are deferred, so their mail waits in the queue.
            base += "\n[delivery]\ndns = false\n"
        if "[authentication]" not in self.extra_config:
            # The inbound checks look up SPF, DKIM and DMARC records: tests that want them
            # say so and run a DNS server (dns_server) for them.
            base += "\n[authentication]\nchecks = false\n"
        self.config_path.write_text(base + self.extra_config)

    def start(self) -> PetrelServer:
        if not self.config_path.exists():
            self.write_config()
        log = (self.stderr_path or self.log_path).open("ab")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = subprocess.Popen(
            [*self.wrapper, self.python, "-m", "petrel", "serve", "--config", self.config_path],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()

        def listening() -> re.Match[str] | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"petrel exited early:\n{self.log_text()}")
            return _LISTENING.search(self.log_text()[offset:])

        match = wait_until(listening, what="petrel to listen")
        assert isinstance(match, re.Match)
        wait_until(lambda: "event=ready" in self.log_text()[offset:], what="petrel to be ready")
        self.host, self.port = match[1], int(match[2])
        self.ports = {}
        for found in _LISTENING.finditer(self.log_text()[offset:]):
            self.ports.setdefault(found[3], int(found[2]))
        return self

    @property
    def cert_path(self) -> Path:
        """The self-signed certificate the server generated under data_dir/tls."""
        return self.data_dir / "tls" / "cert.pem"

    def client_tls(self) -> ssl.SSLContext:
        """A client context that trusts exactly the server's generated certificate."""
        ctx = ssl.create_default_context(cafile=str(self.cert_path))
        return ctx

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    # -- mailboxes -----------------------------------------------------------------------

    def mailbox(self, user: str, domain: str = HOSTNAME) -> Path:
        return self.data_dir / "mailboxes" / domain / user

    def messages(self, user: str, domain: str = HOSTNAME) -> list[bytes]:
        new = self.mailbox(user, domain) / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def wait_for_messages(
        self, user: str, count: int = 1, domain: str = HOSTNAME, timeout: float = 15.0
    ) -> list[bytes]:
        def enough() -> list[bytes] | None:
            found = self.messages(user, domain)
            return found if len(found) >= count else None

        found = wait_until(enough, timeout, f"{count} message(s) for {user}@{domain}")
        assert isinstance(found, list)
        return found

    def queue_files(self) -> list[str]:
        active = self.data_dir / "queue" / "active"
        return sorted(os.listdir(active)) if active.is_dir() else []

    def wait_queue_empty(self, timeout: float = 15.0) -> None:
        wait_until(lambda: not self.queue_files(), timeout, "the queue to drain")

    def petrel_cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run ``petrel ARGS --config <this server's config>``."""
        return subprocess.run(
            [self.python, "-m", "petrel", *args, "--config", str(self.config_path)],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
        )

    def add_user(self, address: str, password: str) -> None:
        result = self.petrel_cli("user", "add", address, "--password-stdin", stdin=password + "\n")
        assert result.returncode == 0, result.stderr

    def connect(self, timeout: float = 10.0, mode: str = "smtp") -> socket.socket:
        port = self.port if mode == "smtp" else self.ports[mode]
        return socket.create_connection((self.host, port), timeout=timeout)


@pytest.fixture
def petrel_factory(tmp_path: Path) -> Iterator[Callable[..., PetrelServer]]:
    """Start servers with extra TOML appended to the base config; all are stopped at the end."""
    servers: list[PetrelServer] = []

    def make(
        extra_config: str = "",
        name: str = "petrel",
        data_dir: Path | None = None,
        server_config: str = "",
    ) -> PetrelServer:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        server = PetrelServer(root, extra_config, data_dir, server_config)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        if server.process is not None:
            server.kill()


@pytest.fixture
def petrel(petrel_factory: Callable[..., PetrelServer]) -> PetrelServer:
    return petrel_factory()


class RawClient:
    """A byte-exact SMTP client over a socket, for sessions typed as in the seeds."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[str]:
        """Read one (possibly multi-line) reply; returns its lines without CRLF."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode("utf-8")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return lines

    def command(self, line: str) -> list[str]:
        self.send(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext, server_hostname: str = HOSTNAME) -> None:
        """Wrap the socket in TLS (after a 220 to STARTTLS); nothing may be buffered."""
        assert self.buffer == b"", f"bytes after the STARTTLS reply: {self.buffer!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def at_eof(self) -> bool:
        """True when the server closed the connection (after any buffered bytes)."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLEOFError):
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(petrel: PetrelServer) -> Iterator[RawClient]:
    client = RawClient(petrel.connect())
    yield client
    client.close()


def etrn_conversation(server: PetrelServer) -> None:
    """ETRN (RFC 1985) from a relay client, as a test asserts it with or without workers:
    251 while nothing waits for the node, 250 once a message does, 458 and 501 for the
    forms Petrel does not serve. The server must have relay_networks = 127.0.0.1/32."""
    client = RawClient(server.connect())
    client.reply()
    client.command("EHLO relay.test")
    assert client.command("ETRN elsewhere.test") == [
        "251 2.0.0 No messages waiting for node elsewhere.test"
    ]
    client.command("MAIL FROM:<app@relay.test>")
    client.command("RCPT TO:<someone@elsewhere.test>")
    client.command("DATA")
    client.send(b"Subject: waits\r\n\r\nfor the relay\r\n.\r\n")
    assert client.reply()[0].endswith("Message accepted for delivery")
    # With workers, the message reaches the manager through the pickup pipe: once it has
    # been tried (and deferred: no DNS in tests), it waits there for the node.
    wait_until(lambda: "event=deferred" in server.log_text(), what="the first attempt")
    assert client.command("ETRN elsewhere.test") == [
        "250 2.0.0 Queuing for node elsewhere.test started"
    ]
    assert client.command("ETRN @test")[0].startswith("250 2.0.0")
    assert client.command("ETRN #queue")[0].startswith("458 4.0.0")
    assert client.command("ETRN")[0].startswith("501 5.5.4")
    client.close()


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    """A Knot DNS server on loopback serving the zones a test gives it (tests/dns_server.py).

    Point Petrel at it with ``[dns]\\nnameservers = ["<dns_server.address>"]``; zones may
    be given before or after it starts, and ``zone`` again reloads one.
    """
    server = DnsServer(tmp_path / "knot")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """A loopback "host:port" that takes DNS queries and never answers: a timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"
