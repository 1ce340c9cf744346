"""``petrel status`` and the systemd unit with its sd_notify messages (issue 15, items 2, 6)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "petrel.service"


def _send(server: PetrelServer, rcpt: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail("ann@example.org", [rcpt], f"Subject: to {rcpt}\r\n\r\nhello\r\n")


def _status(server: PetrelServer) -> dict[str, object]:
    result = server.petrel_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert isinstance(info, dict)
    return info


RELAY = '[domains]\nrelay_networks = ["127.0.0.0/8"]\n'


def test_status_reports_pid_listeners_queue_and_counters(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    petrel = petrel_factory(RELAY)
    assert petrel.process is not None
    _send(petrel, f"bob@{HOSTNAME}")  # delivered here
    _send(petrel, "carol@unreachable.example")  # no DNS in tests: deferred
    petrel.wait_for_messages("bob")

    def settled() -> dict[str, object] | None:
        info = _status(petrel)
        queue = info["queue"]
        assert isinstance(queue, dict)
        return info if queue["deferred"] == 1 and queue["total"] == 1 else None

    info = wait_until(settled, what="one delivered, one deferred")
    assert isinstance(info, dict)
    assert info["pid"] == petrel.process.pid
    assert {"address": f"127.0.0.1:{petrel.port}", "mode": "smtp"} in info["listeners"]  # type: ignore[operator]
    assert info["workers"] == []
    messages = info["messages"]
    assert isinstance(messages, dict)
    assert messages["in"] == 2 and messages["delivered"] == 1 and messages["out"] == 1
    assert messages["deferred"] >= 1
    assert isinstance(info["version"], str) and isinstance(info["errors"], list)

    human = petrel.petrel_cli("status")
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert f"pid {petrel.process.pid}" in text
    assert f"127.0.0.1:{petrel.port} (smtp)" in text
    assert "1 messages (0 queued, 0 active, 1 deferred, 0 held)" in text
    assert "2 in, 1 out" in text


def test_status_with_workers_names_them(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(server_config="workers = 2")

    def both_up() -> list[dict[str, object]] | None:
        workers = _status(server)["workers"]
        assert isinstance(workers, list)
        return workers if len(workers) == 2 and all(w["pid"] for w in workers) else None

    wait_until(both_up, what="two workers")
    text = server.petrel_cli("status").stdout
    assert "workers:   2 (" in text


def test_status_without_a_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "petrel.toml"
    config.write_text(f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "{tmp_path / "data"}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "no server is running" in result.stderr


# -- systemd ---------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's binary to exist: point it at this interpreter's petrel
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/petrel",
        "PrivateTmp=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=",
    ):
        assert line in text, line
    petrel_bin = Path(sys.executable).with_name("petrel")
    unit = tmp_path / "petrel.service"
    unit.write_text(text.replace("/usr/bin/petrel", str(petrel_bin)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    # an unknown key or a bad value is only warned about: any line naming the unit fails
    assert result.returncode == 0 and "petrel.service" not in output, output


class _FakeSystemd:
    """A NOTIFY_SOCKET: an AF_UNIX datagram socket bound in a temporary directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[list[str]] = []

    def collect(self) -> list[list[str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.append(data.decode().split("\n"))

    def wait_for(self, line: str, count: int = 1) -> None:
        wait_until(lambda: sum(line in m for m in self.collect()) >= count, what=f"{line} x{count}")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sd_notify_ready_reloading_stopping(tmp_path: Path, workers: int) -> None:
    sock_dir = Path(tempfile.mkdtemp())  # short: sun_path holds 108 bytes, tmp_path may not
    fake = _FakeSystemd(sock_dir / "notify")
    server = PetrelServer(tmp_path, server_config=f"workers = {workers}")
    server.env = {**os.environ, "NOTIFY_SOCKET": str(fake.path)}
    try:
        server.start()  # returns after event=ready
        assert server.process is not None
        fake.wait_for("READY=1")
        ready = next(m for m in fake.messages if "READY=1" in m)
        assert f"MAINPID={server.process.pid}" in ready
        server.process.send_signal(signal.SIGHUP)
        fake.wait_for("READY=1", count=2)
        lines = [line for m in fake.messages for line in m]
        reloading = lines.index("RELOADING=1")
        assert any(x.startswith("MONOTONIC_USEC=") for x in lines[reloading:])
        assert "READY=1" in lines[reloading:]
        assert server.stop() == 0
        fake.collect()
        assert fake.messages[-1][0] == "STOPPING=1"
        # only the parent notifies, workers never do: READY, RELOADING, READY, STOPPING
        assert [m[0] for m in fake.messages] == [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1",
        ], fake.messages
    finally:
        if server.process is not None:
            server.kill()
        fake.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_sd_notify_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    from petrel.server.notify import notify

    name = f"petrel-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1", "STATUS=ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


def test_error_log_keeps_the_last_errors_and_the_report_shows_them() -> None:
    from petrel.log import log_event
    from petrel.status import ERRORS_KEPT, ErrorLog, format_status

    errors = ErrorLog()
    logger = logging.getLogger("petrel.test-status")
    logger.addHandler(errors)
    try:
        log_event(logger, "not-kept", level=logging.WARNING)
        for n in range(ERRORS_KEPT + 2):
            log_event(logger, "queue-file-error", level=logging.ERROR, error=f"disk {n}")
    finally:
        logger.removeHandler(errors)
    kept = list(errors.records)
    assert len(kept) == ERRORS_KEPT
    assert (
        kept[-1]["event"] == "queue-file-error" and kept[-1]["error"] == f"disk {ERRORS_KEPT + 1}"
    )
    assert all(entry["event"] != "not-kept" for entry in kept)
    text = format_status({"pid": 7, "version": "1", "started": 0.0, "uptime": 90.0, "errors": kept})
    assert "pid 7, up 1m 30s" in text
    assert f"errors:    last {ERRORS_KEPT}" in text and "error=disk 11" in text
