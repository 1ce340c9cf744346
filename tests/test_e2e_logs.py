"""``[log]`` on a real ``petrel serve``: a file that logrotate can rotate (SIGUSR1), also
with workers; syslog datagrams; ``format`` from the config and the flag that wins.

stdout and stderr of the server go to ``stderr.log``, so a line in the configured file
came through the file target.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import PetrelServer, wait_until

_CONNECT_BY = re.compile(r"event=connect .* worker=(\d+)")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., PetrelServer]]:
    started: list[PetrelServer] = []

    def make(log_config: str, server_config: str = "") -> PetrelServer:
        server = PetrelServer(tmp_path, server_config=server_config)
        server.extra_config = f'\n[log]\nfile = "{server.log_path}"\n{log_config}\n'
        server.stderr_path = tmp_path / "stderr.log"
        started.append(server)
        return server.start()

    yield make
    for server in started:
        if server.process is not None:
            server.kill()


def _stderr(server: PetrelServer) -> str:
    assert server.stderr_path is not None
    return server.stderr_path.read_text() if server.stderr_path.exists() else ""


def _connect_until(server: PetrelServer, done: Callable[[], bool]) -> None:
    """Open sessions (held open, so both workers get some) until ``done()``."""
    held: list[socket.socket] = []
    try:
        for _ in range(200):
            if done():
                return
            sock = server.connect()
            sock.recv(512)  # the greeting: the session has started (and been logged)
            held.append(sock)
        assert done()
    finally:
        for sock in held:
            sock.close()


def test_file_target_rotated_with_sigusr1(servers: Callable[..., PetrelServer]) -> None:
    server = servers('target = "file"')
    assert "event=ready" in server.log_text()
    rotated = server.log_path.with_name("petrel.log.1")
    server.log_path.rename(rotated)  # logrotate, then its postrotate: kill -USR1
    assert server.process is not None
    server.process.send_signal(signal.SIGUSR1)
    _connect_until(server, lambda: "event=connect" in server.log_text())
    assert server.stop() == 0
    new = server.log_text()
    assert "event=ready" not in new and "event=stopped" in new
    assert "event=ready" in rotated.read_text() and "event=stopped" not in rotated.read_text()
    assert _stderr(server) == ""  # nothing went to stderr


def test_file_target_with_workers_all_processes_reopen(
    servers: Callable[..., PetrelServer],
) -> None:
    server = servers('target = "file"', server_config="workers = 2")
    wait_until(lambda: server.log_text().count("event=worker-ready") >= 2, what="workers ready")
    rotated = server.log_path.with_name("petrel.log.1")
    server.log_path.rename(rotated)
    assert server.process is not None
    server.process.send_signal(signal.SIGUSR1)  # the parent forwards it to the workers

    def both_workers_in_new_file() -> bool:
        return set(_CONNECT_BY.findall(server.log_text())) == {"1", "2"}

    _connect_until(server, both_workers_in_new_file)
    assert server.stop() == 0
    new = server.log_text()
    assert new.count("event=worker-stopped") == 2 and "event=stopped" in new  # parent too
    assert "event=worker-ready" not in new
    assert rotated.read_text().count("event=worker-ready") == 2
    assert _stderr(server) == ""


def test_format_json_from_the_config_and_the_flag_wins(tmp_path: Path) -> None:
    server = PetrelServer(tmp_path)
    server.extra_config = f'\n[log]\ntarget = "file"\nfile = "{server.log_path}"\nformat = "json"\n'
    server.write_config()
    argv = [sys.executable, "-m", "petrel", "serve", "--config", str(server.config_path)]

    def run_until_ready(*flags: str) -> str:
        process = subprocess.Popen([*argv, *flags], cwd=tmp_path, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: "ready" in server.log_text(), what="a 'ready' log line")
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0
        assert process.stderr is not None and process.stderr.read() == b""
        text = server.log_text()
        server.log_path.unlink()
        return text

    records = [json.loads(line) for line in run_until_ready().splitlines()]  # every line
    assert any(r["event"] == "ready" for r in records)
    text = run_until_ready("--log-format", "text")
    assert "event=ready" in text and "{" not in text


def test_syslog_target_sends_mail_info_with_pid_tags(
    servers: Callable[..., PetrelServer], tmp_path: Path
) -> None:
    path = tmp_path / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(10)
    server = PetrelServer(tmp_path, server_config="workers = 2")
    server.extra_config = '\n[log]\ntarget = "syslog"\n'
    server.env = {**os.environ, "PETREL_SYSLOG_SOCKET": str(path)}
    server.write_config()
    process = subprocess.Popen(
        [sys.executable, "-m", "petrel", "serve", "--config", str(server.config_path)],
        cwd=tmp_path,
        env=server.env,
        stderr=subprocess.PIPE,
    )
    try:
        datagrams: list[bytes] = []
        while sum(b"event=worker-ready" in d for d in datagrams) < 2:
            datagrams.append(receiver.recv(65536))
        assert all(d.startswith((b"<22>petrel[", b"<20>petrel[")) for d in datagrams)
        tags = {d.split(b">", 1)[1].split(b": ", 1)[0] for d in datagrams}
        ready = [d for d in datagrams if b"event=worker-ready" in d]
        assert all(d.startswith(b"<22>petrel[") for d in ready)  # mail.info
        assert f"petrel[{process.pid}]".encode() in tags  # the parent's lines
        assert len(tags) == 3  # parent and two workers, each with its own pid
        assert b" info petrel event=worker-ready pid=" in ready[0]
        assert not ready[0][4:].split(b": ", 1)[1][:1].isdigit()  # no timestamp of ours
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        receiver.close()
    assert process.stderr is not None
    assert process.stderr.read() == b""


def test_bad_log_value_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "petrel.toml"
    config.write_text('[log]\ntarget = "file"\nfile = "/nonexistent-dir/petrel.log"\n')
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("petrel: log.file: cannot open /nonexistent-dir/petrel.log")
    assert result.stderr.count("\n") == 1
    config.write_text('[log]\nformat = "yaml"\n')
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "petrel: log.format: must be one of text, json, got 'yaml'\n"
