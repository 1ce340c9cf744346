"""Issue 14 (7, 8, 11): a full disk, a hostile data_dir owner, and Maildir tmp/ debris.

Each test runs the real ``petrel serve``. Full disks are small tmpfs mounts and other
users are throwaway uids, so these need root (as CI has); without it they skip.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, mounted_tmpfs, wait_until

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tmpfs, chown)")


def _send(server: PetrelServer, rcpt: str, subject: str) -> str:
    """Send one message; returns the queue id from the 250 reply."""
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("fs-safety.test")
        client.mail("sender@fs-safety.test")
        client.rcpt(f"{rcpt}@{HOSTNAME}")
        code, text = client.data(f"Subject: {subject}\r\n\r\nkeep me\r\n".encode())
        assert code == 250, text
        return text.decode().split()[1]


def _new_log(server: PetrelServer, offset: int) -> str:
    return server.log_text()[offset:]


# -- 7: a full disk ------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at the end."""
    with mounted_tmpfs(tmp_path / "tiny-disk", "1m") as mount_point:
        yield mount_point


def _fill(disk: Path, name: str = "filler") -> Path:
    """Write a file until the disk says ENOSPC; returns it (unlink it to free the space)."""
    filler = disk / name
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == 0
    return filler


def _mail_from(server: PetrelServer) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("fs-safety.test")
        return client.mail("sender@fs-safety.test")


@needs_root
def test_restart_after_kill_9_on_a_full_disk_serves_and_answers_452(
    tiny_disk: Path, petrel_factory: Callable[..., PetrelServer]
) -> None:
    server = petrel_factory(
        '[queue]\nmin_backoff = "1s"\nmax_backoff = "2s"\n', data_dir=tiny_disk / "data"
    )
    _send(server, "early", "before the disk filled")
    server.wait_for_messages("early")
    blocker = server.mailbox("stuck")
    blocker.write_text("not a maildir")  # its delivery fails: the message stays queued
    queued = _send(server, "stuck", "queued across the crash")
    wait_until(lambda: "event=deferred" in server.log_text(), what="the deferral")
    server.kill()
    filler = _fill(tiny_disk)

    offset = len(server.log_text())
    server.start()  # waits for the listener and the ready line
    log = _new_log(server, offset)
    assert len(re.findall(r"event=pid-file-unwritable .*No space left on device", log)) == 1
    assert "pid_file=none" in log and "recovered=1" in log
    assert not (server.data_dir / "petrel.pid").exists()  # the stale one is gone too
    refill = _fill(tiny_disk, "refill")  # what removing the stale pid file freed
    code, text = _mail_from(server)
    assert (code, text[:5]) == (452, b"4.3.1")
    wait_until(
        lambda: "event=queue-file-error" in _new_log(server, offset),
        what="the retried delivery to fail to save its state",
    )

    filler.unlink()
    refill.unlink()
    blocker.unlink()
    wait_until(lambda: _mail_from(server)[0] == 250, what="MAIL to be accepted again")
    _send(server, "late", "after space came back")
    assert server.wait_for_messages("late")
    [stuck] = server.wait_for_messages("stuck")
    assert f"id {queued}".encode() in stuck
    server.wait_queue_empty()
    assert server.stop() == 0
    assert "Traceback" not in _new_log(server, offset)


@needs_root
def test_first_start_on_a_full_disk_runs_without_tls_until_sighup(
    tiny_disk: Path, petrel_factory: Callable[..., PetrelServer]
) -> None:
    filler = _fill(tiny_disk)
    server = petrel_factory(data_dir=tiny_disk / "data")
    log = server.log_text()
    assert len(re.findall(r"error petrel\.tls event=tls-unavailable .*No space left", log)) == 1
    assert list((server.data_dir / "tls").iterdir()) == []  # no half-written key
    # The AUTH throttle's shared table cannot be made either: this process keeps its own.
    assert "event=auth-state-unwritable" in log
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("fs-safety.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 502

    filler.unlink()
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "event=tls-reloaded" in server.log_text(), what="the reload")
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("fs-safety.test")
        assert client.has_extn("starttls")
        client.starttls(context=server.client_tls())
        client.ehlo("fs-safety.test")
    assert server.stop() == 0
    assert "Traceback" not in server.log_text()


# -- 8: files someone else could change -----------------------------------------------------


def _serve_once(server: PetrelServer) -> subprocess.CompletedProcess[str]:
    """Run ``petrel serve`` expecting it to refuse to start."""
    server.write_config()
    return subprocess.run(
        [sys.executable, "-m", "petrel", "serve", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=20,  # a refusal takes a second; a server that runs is the failure
        cwd=server.root,
    )


def _give_away(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


def _group_writable(path: Path) -> None:
    path.chmod(0o770)


def _world_writable(path: Path) -> None:
    path.chmod(0o666)


@needs_root
@pytest.mark.parametrize(
    ("target", "change", "complaint"),
    [
        ("data", _give_away, f"belongs to uid {NOBODY}"),
        ("data", _group_writable, "writable by group or others (mode 0770)"),
        ("data/users", _world_writable, "writable by group or others (mode 0666)"),
        ("data/aliases", _give_away, f"belongs to uid {NOBODY}"),
        (".", _give_away, f"belongs to uid {NOBODY}"),  # the directory above data_dir
    ],
)
def test_a_data_dir_others_can_change_is_refused_in_one_line(
    tmp_path: Path, target: str, change: Callable[[Path], None], complaint: str
) -> None:
    root = tmp_path / "petrel"
    (root / "data").mkdir(parents=True, mode=0o700)
    (root / "data" / "users").write_text("")
    (root / "data" / "aliases").write_text("postmaster: root\n")
    change(root / target)
    server = PetrelServer(root)
    result = _serve_once(server)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "error petrel event=untrusted-path" in line
    assert complaint in line and str((root / target).resolve()) in line
    assert "Traceback" not in result.stderr
    assert not (root / "data" / "queue").exists()  # refused before touching anything


def test_a_mailboxes_symlink_defers_and_nothing_is_written_through_it(
    tmp_path: Path, petrel_factory: Callable[..., PetrelServer]
) -> None:
    server = petrel_factory('[queue]\nmin_backoff = "1s"\nmax_backoff = "2s"\n')
    _send(server, "bob", "before")
    server.wait_for_messages("bob")
    mailboxes = server.data_dir / "mailboxes"
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o700)
    os.rename(mailboxes, server.data_dir / "mailboxes.real")
    mailboxes.symlink_to(root_only)  # what the hostile owner did

    queue_id = _send(server, "carol", "during")
    pattern = re.compile(rf"event=deferred queue_id={queue_id} .*{re.escape(str(mailboxes))}")
    line = wait_until(lambda: pattern.search(server.log_text()), what="the deferral")
    assert isinstance(line, re.Match) and "is a symbolic link" in server.log_text()[line.start() :]
    assert list(root_only.rglob("*")) == []
    assert server.queue_files() == [queue_id]

    mailboxes.unlink()
    os.rename(server.data_dir / "mailboxes.real", mailboxes)
    [carol] = server.wait_for_messages("carol")
    assert b"Subject: during" in carol
    server.wait_queue_empty()
    assert list(root_only.rglob("*")) == []
    assert server.stop() == 0


# -- 11: Maildir tmp/ debris ---------------------------------------------------------------


def _aged(path: Path, hours: float) -> Path:
    path.write_bytes(b"left by a writer killed mid-delivery")
    then = time.time() - hours * 3600
    os.utime(path, (then, then))
    return path


def test_maildir_tmp_files_older_than_36_hours_are_removed_at_start(
    tmp_path: Path, petrel_factory: Callable[..., PetrelServer]
) -> None:
    data_dir = tmp_path / "data"
    bob = data_dir / "mailboxes" / HOSTNAME / "bob"
    for sub in ("tmp", "new", "cur", ".Sent/tmp", ".Sent/new", ".Sent/cur"):
        (bob / sub).mkdir(parents=True)
    old = [_aged(bob / "tmp" / f"1700000000.M00000{i}P1.host", 40) for i in range(3)]
    old.append(_aged(bob / ".Sent" / "tmp" / "1700000000.M000009P1.host", 72))
    recent = _aged(bob / "tmp" / "1700000000.M000010P1.host", 30)
    delivered = _aged(bob / "new" / "1600000000.M000000P1.host,S=10", 1000)
    fresh = bob / "tmp" / "being-written"
    fresh.write_bytes(b"")

    server = petrel_factory(data_dir=data_dir)
    match = wait_until(
        lambda: re.search(
            r"event=maildir-tmp-cleaned removed=(\d+) skipped=(\d+)", server.log_text()
        ),
        what="the tmp/ clean-up",
    )
    assert isinstance(match, re.Match) and match.groups() == ("4", "0")
    assert not any(p.exists() for p in old)
    assert recent.exists() and fresh.exists() and delivered.exists()
    # Delivery still works in the cleaned Maildir.
    _send(server, "bob", "after the clean-up")
    assert len(server.wait_for_messages("bob", count=2)) == 2
    assert server.stop() == 0
