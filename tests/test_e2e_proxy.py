"""Behind a load balancer: ``[[listener]] proxy_protocol = true`` (issue 15, item 5).

Hand-made PROXY headers (v1 and v2, IPv4 and IPv6) from a raw socket, then a real
HAProxy started here. 192.0.2.0/24 and 2001:db8::/32 are documentation addresses: they
appear only as text in the headers, no traffic goes there.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until
from test_proxyproto import v2

PROXY_LISTENERS = """
[[listener]]
address = "127.0.0.1:0"
mode = "smtp"
proxy_protocol = true

[[listener]]
address = "127.0.0.1:0"
mode = "submissions"
proxy_protocol = true
"""

HEADERS = {
    "v1-tcp4": (b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\n", "192.0.2.7", 40001),
    "v1-tcp6": (b"PROXY TCP6 2001:db8::7 2001:db8::1 40002 25\r\n", "2001:db8::7", 40002),
    "v2-ipv4": (v2("192.0.2.7", "198.51.100.1", 40003, 25), "192.0.2.7", 40003),
    "v2-ipv6": (v2("2001:db8::7", "2001:db8::1", 40004, 25), "2001:db8::7", 40004),
}


def proxy_port(server: PetrelServer, mode: str = "smtp") -> int:
    found = re.search(
        rf"event=listening address=127\.0\.0\.1:(\d+) mode={mode} proxy=yes", server.log_text()
    )
    assert found, server.log_text()
    return int(found[1])


def connect(server: PetrelServer, mode: str = "smtp") -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy_port(server, mode)), timeout=10)


@pytest.fixture
def proxied(petrel_factory: Callable[..., PetrelServer]) -> PetrelServer:
    return petrel_factory(PROXY_LISTENERS)


def closed_silently(sock: socket.socket) -> bool:
    """The server closed without a byte (no 220: the peer may be a balancer)."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_the_header_s_client_is_used_in_replies_received_and_logs(proxied: PetrelServer) -> None:
    for index, (name, (header, ip, port)) in enumerate(HEADERS.items()):
        client = RawClient(connect(proxied))
        client.send(header)
        assert client.reply()[0].startswith(f"220 {HOSTNAME} ESMTP"), name
        ehlo = client.command("EHLO lb.example")
        assert ehlo[0] == f"250-{HOSTNAME} Hello lb.example [{ip}], pleased to meet you", name
        assert client.command("MAIL FROM:<a@example.org>")[0].startswith("250")
        assert client.command(f"RCPT TO:<willie@{HOSTNAME}>")[0].startswith("250")
        assert client.command("DATA")[0].startswith("354")
        client.send(f"Subject: {name}\r\n\r\nhi\r\n.\r\n".encode())
        assert client.reply()[0].startswith("250 2.0.0")
        assert client.command("QUIT")[0].startswith("221")
        client.close()
        message = proxied.wait_for_messages("willie", index + 1)[index]
        assert f"Subject: {name}".encode() in message
        assert f"(unknown [{ip}])".encode() in message.split(b"\n\n")[0], name
        log = proxied.log_text()
        assert re.search(rf"event=connect .*client={re.escape(ip)}:{port} proxy=127\.0\.0\.1:", log)


def test_header_and_first_command_in_one_segment(proxied: PetrelServer) -> None:
    """A client (or balancer) that sends before the greeting loses nothing."""
    client = RawClient(connect(proxied))
    client.send(HEADERS["v2-ipv4"][0] + b"EHLO fast.example\r\n")
    assert client.reply()[0].startswith("220 ")
    assert (
        client.reply()[0] == f"250-{HOSTNAME} Hello fast.example [192.0.2.7], pleased to meet you"
    )
    client.close()


def test_per_ip_limits_count_the_carried_address(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    # 127.0.0.1 (the balancer) is exempt by default: only the carried address can count.
    server = petrel_factory(PROXY_LISTENERS + "\n[limits]\nconnections_per_ip = 2\n")
    held = []
    for _ in range(2):
        client = RawClient(connect(server))
        client.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
        assert client.reply()[0].startswith("220 ")
        held.append(client)
    third = RawClient(connect(server))
    third.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
    assert third.reply() == [
        f"421 4.7.0 {HOSTNAME} Too many connections from your address, try again later"
    ]
    other = RawClient(connect(server))
    other.send(b"PROXY TCP4 192.0.2.8 198.51.100.1 40000 25\r\n")
    assert other.reply()[0].startswith("220 ")
    assert re.search(r"event=reject .*client=192\.0\.2\.7 ", server.log_text())
    for client in (*held, third, other):
        client.close()


def test_a_client_speaking_smtp_directly_is_closed_with_a_log_line(proxied: PetrelServer) -> None:
    sock = connect(proxied)
    sock.sendall(b"EHLO direct.example\r\n")
    assert closed_silently(sock)
    sock.close()
    # One that waits for a greeting gets none: closed after the header's timeout.
    sock = connect(proxied)
    started = time.monotonic()
    assert closed_silently(sock)
    assert 4 < time.monotonic() - started < 9
    sock.close()
    log = proxied.log_text()
    assert re.search(r"event=proxy-rejected .*client=127\.0\.0\.1:\d+ .*no PROXY header", log)
    assert "no PROXY header within 5s" in log
    assert "event=connect" not in log


def test_a_header_from_outside_proxy_networks_is_refused(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(PROXY_LISTENERS, server_config='proxy_networks = ["10.255.255.0/24"]')
    for mode in ("smtp", "submissions"):
        sock = connect(server, mode)
        sock.sendall(HEADERS["v1-tcp4"][0])
        assert closed_silently(sock)
        sock.close()
    log = server.log_text()
    found = re.findall(
        r"event=proxy-rejected .*mode=(\w+) reason=.*not in server\.proxy_networks", log
    )
    assert sorted(found) == ["smtp", "submissions"], log
    assert "event=connect" not in log


def test_submissions_reads_the_header_before_the_tls_handshake(proxied: PetrelServer) -> None:
    for name in ("v1-tcp6", "v2-ipv4"):
        header, ip, port = HEADERS[name]
        sock = connect(proxied, "submissions")
        sock.sendall(header)
        client = RawClient(proxied.client_tls().wrap_socket(sock, server_hostname=HOSTNAME))
        assert client.reply()[0].startswith(f"220 {HOSTNAME} ESMTP")
        assert client.command("EHLO lb.example")[0] == (
            f"250-{HOSTNAME} Hello lb.example [{ip}], pleased to meet you"
        )
        client.close()
        assert re.search(
            rf"event=connect .*client={re.escape(ip)}:{port} proxy=127\.0\.0\.1:",
            proxied.log_text(),
        )
    # A bad header is logged and closed before any handshake.
    sock = connect(proxied, "submissions")
    sock.sendall(b"PROXY TCP4 nonsense\r\n")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        proxied.client_tls().wrap_socket(sock, server_hostname=HOSTNAME)
    sock.close()
    assert re.search(
        r"event=proxy-rejected .*mode=submissions reason=.*malformed", proxied.log_text()
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def haproxy(proxied: PetrelServer, tmp_path: Path) -> Iterator[int]:
    """A real HAProxy: a TCP frontend on a free port, petrel's proxy listener behind it."""
    binary = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if binary is None:
        pytest.skip("haproxy is not installed (make system-deps)")
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""
global
    maxconn 64

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend smtp
    bind 127.0.0.1:{port}
    default_backend petrel

backend petrel
    server petrel 127.0.0.1:{proxy_port(proxied)} send-proxy-v2
"""
    )
    log = (tmp_path / "haproxy.log").open("wb")
    process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=log, stderr=log)
    log.close()
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "haproxy.log").read_text())
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, what="haproxy to listen")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_behind_a_real_haproxy(proxied: PetrelServer, haproxy: int) -> None:
    with smtplib.SMTP("127.0.0.1", haproxy, timeout=15) as client:
        source_port = client.sock.getsockname()[1]
        code, text = client.ehlo("behind.example")
        assert code == 250
        assert text.decode().startswith(f"{HOSTNAME} Hello behind.example [127.0.0.1]")
        client.sendmail(
            "a@example.org", [f"willie@{HOSTNAME}"], b"Subject: via haproxy\r\n\r\nhi\r\n"
        )
    [message] = proxied.wait_for_messages("willie")
    head = message.split(b"\n\n")[0]
    assert b"Subject: via haproxy" in head
    assert b"Received: from behind.example (unknown [127.0.0.1])" in head
    # The session's client is smtplib's own socket, not HAProxy's connection to us.
    found = re.search(
        rf"event=connect .*client=127\.0\.0\.1:{source_port} proxy=127\.0\.0\.1:(\d+)",
        proxied.log_text(),
    )
    assert found, proxied.log_text()
    assert int(found[1]) != source_port


def test_workers_serve_proxy_listeners(petrel_factory: Callable[..., PetrelServer]) -> None:
    server = petrel_factory(PROXY_LISTENERS, server_config="workers = 2")
    client = RawClient(connect(server))
    client.send(HEADERS["v2-ipv6"][0])
    assert client.reply()[0].startswith("220 ")
    assert client.command("EHLO lb.example")[0].endswith("[2001:db8::7], pleased to meet you")
    client.close()
