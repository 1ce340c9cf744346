"""A real authoritative DNS server (Knot DNS) on loopback, for tests.

Tests never ask the system resolver: they write zones here and point Petrel's
``[dns] nameservers`` at ``DnsServer.address``. The server runs from a temp directory
(its config, zone files, database and control socket), on an ephemeral port, as the
test's user; `make test` installs the ``knot`` package without starting its service.

    dns = dns_server  # the fixture in conftest.py
    dns.zone("example.test", ["@ MX 10 mx", "mx A 127.0.0.1", f"@ TXT {txt('v=spf1 -all')}"])
    dns.address  # "127.0.0.1:<port>", for [dns] nameservers

Calling ``zone`` again replaces that zone's records and reloads it (the serial goes up
by itself); the new records are served when ``zone`` returns. Records are zone-file
lines relative to the origin (``@`` is the origin, names without a dot are below it),
``NAME [TTL] TYPE DATA``; the default TTL is ``ttl``, and the SOA's negative-caching
TTL (RFC 2308) is ``negative_ttl``. ``silent_nameserver`` (in conftest.py) is an
address that takes queries and never answers: a DNS timeout.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.reversename

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"


def txt(text: str) -> str:
    """``text`` as TXT record data: quoted strings of at most 255 octets (RFC 1035)."""
    data = text.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join(
        '"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks
    )


def reverse_name(ip: str) -> str:
    """The PTR owner name of ``ip``, absolute: ``1.0.0.127.in-addr.arpa.``."""
    return dns.reversename.from_address(ip).to_text()


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (knotd cannot report port 0)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for the DNS server")


class DnsServer:
    """One ``knotd`` serving the zones a test gives it; `stop` ends it."""

    def __init__(self, root: Path, ttl: int = 300, negative_ttl: int = 60) -> None:
        self.root = root
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.zones: dict[str, list[str]] = {}
        self._serials: dict[str, int] = {}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        (root / "zones").mkdir(parents=True, exist_ok=True)
        (root / "db").mkdir(exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "knot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "knot.log"

    def zone(self, origin: str, records: list[str]) -> None:
        """Serve ``origin`` with ``records`` (replacing what it had); reload if running."""
        origin = origin.lower().rstrip(".")
        new = origin not in self.zones
        self.zones[origin] = list(records)
        self._write_zone(origin)
        if self.process is None:
            return
        if new:
            self._write_config()
            self._knotc("reload")
        else:
            self._knotc("zone-reload", origin)
        self._wait_serving(origin)

    def _write_zone(self, origin: str) -> None:
        serial = self._serials[origin] = self._serials.get(origin, 0) + 1
        lines = [
            f"$ORIGIN {origin}.",
            f"$TTL {self.ttl}",
            f"@ SOA ns.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 {self.negative_ttl}",
            f"@ NS ns.{origin}.",
            *self.zones[origin],
        ]
        if not any(r.split()[:1] == ["ns"] for r in self.zones[origin]):
            lines.append("ns A 127.0.0.1")
        path = self.root / "zones" / f"{origin}.zone"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)

    def _write_config(self) -> None:
        zones = "".join(f"  - domain: {origin}\n" for origin in self.zones)
        self.config_path.write_text(
            f"""server:
    rundir: "{self.root}"
    listen: 127.0.0.1@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: "{self.log_path}"
    any: info
database:
    storage: "{self.root / "db"}"
control:
    listen: "{self.root / "knot.sock"}"
template:
  - id: default
    storage: "{self.root / "zones"}"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
{zones}"""
        )

    def start(self) -> DnsServer:
        if not shutil.which(KNOTD):
            raise RuntimeError("knotd is missing: `make system-deps` installs the knot package")
        for _ in range(5):  # the port may be taken between choosing and binding
            self.port = _free_port()
            self._write_config()
            self.process = subprocess.Popen(
                [KNOTD, "-c", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            if self._answering():
                for origin in self.zones:
                    self._wait_serving(origin)
                return self
            self.stop()
        raise RuntimeError(f"knotd did not start:\n{self._log()}")

    def _answering(self) -> bool:
        """Poll until knotd answers queries on its port (any rcode), or it exits."""
        assert self.process is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError, dns.exception.DNSException):
                dns.query.udp(dns.message.make_query(".", "SOA"), "127.0.0.1", 0.2, self.port)
                return True
        return False

    def _wait_serving(self, origin: str) -> None:
        """Until ``origin`` is answered with the serial just written (bounded)."""
        want = self._serials[origin]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, dns.exception.DNSException):
                reply = dns.query.udp(
                    dns.message.make_query(origin + ".", "SOA"), "127.0.0.1", 0.5, self.port
                )
                if reply.answer and reply.answer[0][0].serial == want:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"knotd does not serve {origin} serial {want}:\n{self._log()}")

    def _knotc(self, *args: str) -> None:
        subprocess.run(
            [KNOTC, "-c", str(self.config_path), "-s", str(self.root / "knot.sock"), "-b", *args],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
