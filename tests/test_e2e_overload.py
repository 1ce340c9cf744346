"""Issue 14: one client, or a crowd of them, must not take the server from the others.

Floods, slowloris tricklers, stalled TLS handshakes and connection floods against a
real ``petrel serve``; next to each, a normal client that must still be served. Every
bound is generous: a broken server misses it by far, a loaded machine never does.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until

SUBMISSIONS = """
[[listener]]
address = "127.0.0.1:0"
mode = "submissions"
"""
TIMEOUT_REPLY = f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"


def _connect_from(server: PetrelServer, source: str, port: int | None = None) -> socket.socket:
    """A connection from another loopback address (Linux routes all of 127/8 to lo)."""
    return socket.create_connection(
        (server.host, port or server.port), timeout=10, source_address=(source, 0)
    )


def _send_mail(server: PetrelServer, user: str) -> None:
    with smtplib.SMTP(server.host, server.port, local_hostname="normal.test", timeout=10) as c:
        message = b"Subject: hi\r\n\r\nok\r\n"
        assert c.sendmail("a@normal.test", [f"{user}@{HOSTNAME}"], message) == {}
        assert c.quit()[0] == 221


class _Flooder:
    """Pipelines one command forever and reads (and drops) the replies, so it never
    stalls on backpressure: the server must stay fair to it and to everyone else."""

    def __init__(self, server: PetrelServer, command: bytes) -> None:
        self.sock = server.connect()
        self.sock.settimeout(10)
        self.command = command
        self.stop = threading.Event()
        self.replies = 0
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._read, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        """Send the endless stream in slices that end mid-line, as real reads do."""
        size = 65521  # a prime: the slices end at every offset within a line
        stream = self.command * (size // len(self.command) + 2)
        offset = 0
        try:
            while not self.stop.is_set():
                self.sock.sendall(stream[offset : offset + size])
                offset = (offset + size) % len(self.command)
        except OSError:
            pass

    def _read(self) -> None:
        try:
            while not self.stop.is_set() and (chunk := self.sock.recv(65536)):
                self.replies += chunk.count(b"\r\n")
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        with suppress(OSError):  # the server may have closed it first
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for thread in self._threads:
            thread.join(timeout=10)


@contextmanager
def _flooding(server: PetrelServer, command: bytes, count: int) -> Iterator[list[_Flooder]]:
    flooders = [_Flooder(server, command) for _ in range(count)]
    try:
        wait_until(lambda: flooders[0].replies > 1000, 30, "the flood to be answered")
        yield flooders
    finally:
        for flooder in flooders:
            flooder.close()


# -- 3: pipelining floods ------------------------------------------------------------------


def test_pipelining_floods_do_not_starve_a_normal_client(petrel: PetrelServer) -> None:
    """Each flooding session gets a bounded turn, so a normal transaction goes through."""
    with _flooding(petrel, b"HELO flood.test\r\n", count=6) as flooders:
        started = time.monotonic()
        _send_mail(petrel, "fair")
        elapsed = time.monotonic() - started
        for flooder in flooders:  # and every flooder is served too
            wait_until(lambda f=flooder: f.replies > 1000, 30, "each flood to be answered")
    assert elapsed < 10, f"a normal transaction took {elapsed:.1f} s next to the flood"
    petrel.wait_for_messages("fair")


def test_a_client_that_never_reads_its_replies_is_dropped(petrel_factory) -> None:
    """The server stops reading it at once, and after command_timeout drops it (a close
    would wait forever for replies it never takes)."""
    petrel: PetrelServer = petrel_factory('[limits]\ncommand_timeout = "2s"\n')
    sock = petrel.connect()
    sock.setblocking(False)
    burst = b"HELO flood.test\r\n" * 4096
    started = time.monotonic()
    dropped = False
    while not dropped and time.monotonic() - started < 20:
        try:
            sock.send(burst)
        except BlockingIOError:
            time.sleep(0.1)  # the server has stopped reading; wait for it to give up
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
    sock.close()
    assert dropped, "a client that reads nothing must not hold its session"
    assert "event=timeout" in petrel.log_text()
    _send_mail(petrel, "after.stall")


def test_junk_command_flood_is_closed_by_the_error_limit(petrel: PetrelServer) -> None:
    """Past limits.junk_commands (100) NOOPs count as errors: limits.errors (10) closes."""
    client = RawClient(petrel.connect())
    assert client.reply()[0].startswith("220 ")
    client.send(b"NOOP\r\n" * 5000)  # without reading a single reply
    answers: list[str] = []
    while not (answers and answers[-1].startswith("421")):
        answers += client.reply()
    assert answers[:110] == ["250 2.0.0 OK"] * 110
    assert answers[110:] == [f"421 4.7.0 {HOSTNAME} Too many errors, closing connection"]
    assert client.at_eof()
    client.close()
    _send_mail(petrel, "after.junk")  # a client that sends mail is untouched


def test_a_client_that_sends_mail_may_rset_between_messages(petrel: PetrelServer) -> None:
    """The junk count starts again with each accepted message."""
    with smtplib.SMTP(petrel.host, petrel.port, local_hostname="bulk.test", timeout=10) as c:
        for n in range(3):
            for _ in range(90):
                assert c.noop()[0] == 250
            c.sendmail("a@bulk.test", [f"bulk@{HOSTNAME}"], b"Subject: %d\r\n\r\nok\r\n" % n)
            assert c.rset()[0] == 250
    petrel.wait_for_messages("bulk", count=3)


# -- 5: slowloris ----------------------------------------------------------------------------


def _trickle_until_closed(client: RawClient, byte: bytes, limit: float) -> float:
    """Send one octet every 0.5 s until the server answers; returns the time it took."""
    started = time.monotonic()
    client.sock.settimeout(0.5)
    while time.monotonic() - started < limit:
        try:
            client.send(byte)
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = client.sock.recv(4096)
        except TimeoutError:
            continue
        client.buffer += chunk
        break
    client.sock.settimeout(10)
    return time.monotonic() - started


def test_a_trickled_command_line_times_out_from_its_first_octet(petrel_factory) -> None:
    petrel: PetrelServer = petrel_factory('[limits]\ncommand_timeout = "2s"\n')
    client = RawClient(petrel.connect())
    assert client.reply()[0].startswith("220 ")
    took = _trickle_until_closed(client, b"x", limit=20)
    assert client.reply() == [TIMEOUT_REPLY]
    assert client.at_eof()
    assert took < 15, "every octet must not restart command_timeout"
    assert "event=timeout" in petrel.log_text() and "reason=command" in petrel.log_text()
    client.close()
    _send_mail(petrel, "not.trickling")  # a client that types whole lines is untouched


def test_a_busy_pipeliner_is_not_taken_for_a_trickler(petrel_factory) -> None:
    """Its input never runs dry, but every line completes: no command deadline passes."""
    petrel: PetrelServer = petrel_factory('[limits]\ncommand_timeout = "2s"\n')
    with _flooding(petrel, b"HELO busy.test\r\n", count=1) as [flooder]:
        deadline = time.monotonic() + 5  # well past command_timeout
        while time.monotonic() < deadline:
            before = flooder.replies
            wait_until(lambda n=before: flooder.replies > n, what="more replies")
    assert "event=timeout" not in petrel.log_text()


def test_message_text_below_min_data_rate_times_out(petrel_factory) -> None:
    """2 octets per second is far below the default limits.min_data_rate of 500."""
    petrel: PetrelServer = petrel_factory('[limits]\ndata_timeout = "2s"\n')
    client = RawClient(petrel.connect())
    client.reply()
    client.command("EHLO slow.test")
    assert client.command("MAIL FROM:<a@slow.test>")[0].startswith("250")
    assert client.command(f"RCPT TO:<slow@{HOSTNAME}>")[0].startswith("250")
    assert client.command("DATA")[0].startswith("354")
    took = _trickle_until_closed(client, b"y", limit=20)
    assert client.reply() == [TIMEOUT_REPLY]
    assert client.at_eof()
    assert took < 15, "every octet must not restart data_timeout"
    assert "reason=data-rate" in petrel.log_text()
    client.close()
    assert petrel.queue_files() == []
    # A message at loopback speed is far above the rate, however large.
    with smtplib.SMTP(petrel.host, petrel.port, local_hostname="fast.test", timeout=10) as c:
        body = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2000
        assert c.sendmail("a@fast.test", [f"fast@{HOSTNAME}"], body) == {}
    petrel.wait_for_messages("fast")


# -- 6: stalled TLS handshakes ---------------------------------------------------------------


def test_stalled_tls_handshakes_leave_room_for_real_tls_clients(petrel_factory) -> None:
    """Sockets without a ClientHello get their own small budget and a short timeout."""
    petrel: PetrelServer = petrel_factory(
        SUBMISSIONS + "[limits]\nconnections = 20\nconnections_per_ip = 20\nexempt_networks = []\n"
    )
    port = petrel.ports["submissions"]
    opened = time.monotonic()
    stalled = [_connect_from(petrel, "127.0.0.1", port) for _ in range(25)]
    # Past tls_handshakes_per_ip (10), and a quarter of the connections (5) for an
    # address that already has one in progress, the rest are closed at once.
    wait_until(lambda: petrel.log_text().count("event=reject") >= 5, what="refusals")
    raw = _connect_from(petrel, "127.0.0.3", port)
    with ssl.create_default_context(cafile=str(petrel.cert_path)).wrap_socket(
        raw, server_hostname=HOSTNAME
    ) as tls:
        client = RawClient(tls)
        assert client.reply()[0].startswith("220 ")
        assert client.command("EHLO tls.client.test")[0].startswith("250")
        client.command("QUIT")
    # The stalled ones are dropped after tls_handshake_timeout (10 s), not 30 s.
    for sock in stalled:
        sock.settimeout(max(1.0, opened + 25 - time.monotonic()))
        with suppress(ConnectionResetError):
            assert sock.recv(1) == b""
        sock.close()
    assert time.monotonic() - opened < 25


# -- 12: connection floods ---------------------------------------------------------------------


def test_the_last_slots_are_kept_for_new_addresses(petrel_factory) -> None:
    """Past 90 % of limits.connections only an address without a connection gets in."""
    petrel: PetrelServer = petrel_factory(
        "[limits]\nconnections = 20\nconnections_per_ip = 5\nexempt_networks = []\n"
    )
    held: list[RawClient] = []

    def open_from(source: str) -> tuple[RawClient, str]:
        client = RawClient(_connect_from(petrel, source))
        return client, client.reply()[0]

    for source, count in (("127.0.0.2", 5), ("127.0.0.3", 5), ("127.0.0.4", 5), ("127.0.0.5", 3)):
        for _ in range(count):
            client, greeting = open_from(source)
            assert greeting.startswith("220 "), (source, greeting)
            held.append(client)
    # 18 of 20 in use: 127.0.0.5 is under its per-IP cap of 5 but already holds slots.
    refused, greeting = open_from("127.0.0.5")
    assert greeting == f"421 4.7.0 {HOSTNAME} Too many connections, try again later"
    assert refused.at_eof()
    refused.close()
    for source in ("127.0.0.9", "127.0.0.10"):  # new addresses still get the reserve
        client, greeting = open_from(source)
        assert greeting.startswith("220 "), (source, greeting)
        held.append(client)
    # And nobody gets in once every slot is taken.
    full, greeting = open_from("127.0.0.11")
    assert greeting.startswith("421 4.7.0")
    full.close()
    for client in held:
        client.close()


# -- exempt networks: loopback and relay_networks skip the per-IP caps ---------------------


def test_a_hundred_concurrent_loopback_clients_are_all_served(petrel: PetrelServer) -> None:
    """Loopback is in limits.exempt_networks by default: no 421 past connections_per_ip."""
    clients = [RawClient(petrel.connect()) for _ in range(100)]
    greetings = [client.reply()[0] for client in clients]
    assert [g for g in greetings if not g.startswith("220 ")] == []
    for client in clients:
        assert client.command("EHLO many.test")[0].startswith("250")
    for client in clients:
        assert client.command("QUIT")[0].startswith("221")
        client.close()
    assert "event=reject" not in petrel.log_text()


@pytest.mark.parametrize(
    "config",
    [
        '[limits]\nexempt_networks = ["127.0.0.7/32"]\n',
        '[limits]\nexempt_networks = []\n[domains]\nrelay_networks = ["127.0.0.7/32"]\n',
    ],
    ids=["exempt_networks", "relay_networks"],
)
def test_exempt_clients_skip_the_per_ip_cap_but_count_toward_connections(
    petrel_factory, config: str
) -> None:
    petrel: PetrelServer = petrel_factory(
        config.replace("[limits]\n", "[limits]\nconnections = 10\nconnections_per_ip = 2\n")
    )

    def open_from(source: str) -> tuple[RawClient, str]:
        client = RawClient(_connect_from(petrel, source))
        return client, client.reply()[0]

    held = [open_from("127.0.0.2") for _ in range(2)]
    refused, greeting = open_from("127.0.0.2")  # not exempt: the per-IP cap holds
    assert greeting.startswith("421 4.7.0"), greeting
    refused.close()
    # The exempt address goes past its per-IP cap and into the reserve (one slot of 10).
    held += [open_from("127.0.0.7") for _ in range(8)]
    assert [g for _, g in held if not g.startswith("220 ")] == []
    # ... but limits.connections still counts it.
    full, greeting = open_from("127.0.0.7")
    assert greeting == f"421 4.7.0 {HOSTNAME} Too many connections, try again later"
    full.close()
    for client, _ in held:
        client.close()
