"""``[log]``: its validation, and the three targets of petrel.log in this process."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from petrel.config import LOG_FORMATS, LOG_TARGETS, ConfigError, load_config
from petrel.log import (
    FORMATS,
    SYSLOG_SOCKET_ENV,
    TARGETS,
    log_event,
    request_reopen,
    setup_logging,
)

log = logging.getLogger("petrel.test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    setup_logging()  # back to stderr (closes a file or syslog handler)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "petrel.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nhostname = "mx.test"\n' + text)
    return path


def test_log_section_defaults_and_paths(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert (config.log.target, config.log.format) == ("stderr", "text")
    assert config.log.file == Path("/var/log/petrel/petrel.log")
    config = load_config(_config(tmp_path, '[log]\ntarget = "file"\nfile = "logs/p.log"\n'))
    assert config.log.file == tmp_path / "data" / "logs" / "p.log"  # relative: in data_dir
    config = load_config(_config(tmp_path, '[log]\nfile = "/srv/p.log"\nformat = "json"\n'))
    assert (config.log.file, config.log.format) == (Path("/srv/p.log"), "json")
    assert (LOG_TARGETS, LOG_FORMATS) == (TARGETS, FORMATS)  # config's copy of log's names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('target = "journal"', "log.target: must be one of stderr, syslog, file, got 'journal'"),
        ('format = "xml"', "log.format: must be one of text, json, got 'xml'"),
        ("file = 3", "log.file: must be a non-empty string, got 3"),
        ('file = ""', "log.file: must be a non-empty string, got ''"),
        ('level = "debug"', "log.level: unknown key"),
    ],
)
def test_bad_log_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, f"[log]\n{text}\n"))
    assert str(caught.value) == message


def test_file_target_appends_and_reopens_after_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "petrel.log"
    path.write_text("earlier line\n")
    setup_logging("text", "info", "file", path)
    log_event(log, "first", n=1)
    path.rename(tmp_path / "petrel.log.1")  # logrotate
    log_event(log, "still-old")  # no SIGUSR1 yet: the renamed file
    os.kill(os.getpid(), signal.SIGUSR1)  # the handler setup_logging installed
    log_event(log, "second", n=2)
    old = (tmp_path / "petrel.log.1").read_text().splitlines()
    assert old[0] == "earlier line"
    assert [line.split(" ", 3)[3] for line in old[1:]] == ["event=first n=1", "event=still-old"]
    new = path.read_text().splitlines()
    assert len(new) == 1 and new[0].endswith(" info petrel.test event=second n=2")


def test_file_target_json(tmp_path: Path) -> None:
    path = tmp_path / "petrel.log"
    setup_logging("json", "info", "file", path)
    log_event(log, "hello", who="x y")
    record = json.loads(path.read_text())
    assert record["event"] == "hello" and record["who"] == "x y" and "ts" in record


def test_an_unopenable_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught:
        setup_logging("text", "info", "file", tmp_path / "missing" / "petrel.log")
    assert str(caught.value).startswith(f"log.file: cannot open {tmp_path}/missing/petrel.log:")


def test_a_failed_reopen_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "logs" / "petrel.log"
    path.parent.mkdir()
    setup_logging("text", "info", "file", path)
    path.parent.rename(tmp_path / "moved")
    request_reopen()
    log_event(log, "kept")
    assert "event=kept" in (tmp_path / "moved" / "petrel.log").read_text()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("petrel: log.file: cannot reopen")


@pytest.fixture
def syslog_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for /dev/log (``PETREL_SYSLOG_SOCKET``)."""
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    monkeypatch.setenv(SYSLOG_SOCKET_ENV, str(path))
    yield server
    server.close()


def test_syslog_target_mail_facility_and_petrel_pid_tag(syslog_server: socket.socket) -> None:
    setup_logging("text", "info", "syslog")
    log_event(log, "connect", client="192.0.2.1")
    log_event(log, "trouble", level=logging.WARNING)
    tag = f"petrel[{os.getpid()}]: "
    # mail.info = 2 * 8 + 6, mail.warning = 2 * 8 + 4; no timestamp: syslog adds its own
    assert (
        syslog_server.recv(4096)
        == f"<22>{tag}info petrel.test event=connect client=192.0.2.1".encode()
    )
    assert syslog_server.recv(4096) == f"<20>{tag}warning petrel.test event=trouble".encode()


def test_syslog_target_json(syslog_server: socket.socket) -> None:
    setup_logging("json", "info", "syslog")
    log_event(log, "connect", client="192.0.2.1")
    data = syslog_server.recv(4096)
    prefix = f"<22>petrel[{os.getpid()}]: ".encode()
    assert data.startswith(prefix)
    record = json.loads(data[len(prefix) :])
    assert record == {
        "level": "info",
        "logger": "petrel.test",
        "event": "connect",
        "client": "192.0.2.1",
    }


def test_syslog_without_a_socket_falls_back_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SYSLOG_SOCKET_ENV, str(tmp_path / "no-such.sock"))
    setup_logging("text", "info", "syslog")
    log_event(log, "after")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert " warning petrel.log event=syslog-unavailable socket=" in lines[0]
    assert 'effect="logging to stderr"' in lines[0]
    assert lines[1].endswith(" info petrel.test event=after")
