"""Once a client has seen 250 for its DATA, the message survives kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, mounted_tmpfs, wait_until


def _send(server: PetrelServer, rcpt: str, subject: str) -> str:
    """Send one message; returns the queue id from the 250 reply."""
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("durable.test")
        client.mail("sender@durable.test")
        client.rcpt(f"{rcpt}@{HOSTNAME}")
        code, text = client.data(f"Subject: {subject}\r\n\r\nkeep me\r\n".encode())
        assert code == 250
        return text.decode().split()[1]


def test_kill_9_with_message_still_queued_then_restart_delivers_it(petrel_factory) -> None:
    """The mailbox path is blocked so the message is deferred in the queue, for sure."""
    server: PetrelServer = petrel_factory('[queue]\nmin_backoff = "1s"\nmax_backoff = "2s"\n')
    blocker = server.mailbox("stuck")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a maildir")  # delivery fails with an OS error: deferred
    queue_id = _send(server, "stuck", "survivor")
    wait_until(lambda: "event=deferred" in server.log_text(), what="the deferral")
    assert server.queue_files() == [queue_id]
    server.kill()

    blocker.unlink()
    server.start()
    [message] = server.wait_for_messages("stuck")
    assert b"Subject: survivor" in message
    assert f"id {queue_id}".encode() in message
    server.wait_queue_empty()
    assert "recovered=1" in server.log_text()


def test_kill_9_right_after_250_loses_nothing_and_duplicates_nothing(petrel_factory) -> None:
    server: PetrelServer = petrel_factory()
    ids = [_send(server, "fast", f"m{i}") for i in range(20)]
    server.kill()  # whatever was or was not delivered yet
    server.start()
    messages = server.wait_for_messages("fast", count=20)
    server.wait_queue_empty()
    assert len(messages) == 20
    for queue_id in ids:
        assert sum(f"id {queue_id}".encode() in m for m in messages) == 1


def test_sigterm_stops_cleanly(petrel: PetrelServer) -> None:
    _send(petrel, "bye", "before stop")
    petrel.wait_for_messages("bye")
    assert petrel.stop() == 0
    assert "event=stopped" in petrel.log_text()


def test_json_log_format(tmp_path) -> None:
    server = PetrelServer(tmp_path)
    server.write_config()
    log = (tmp_path / "json.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "petrel",
            "serve",
            "--config",
            str(server.config_path),
            "--log-format",
            "json",
        ],
        cwd=tmp_path,
        stderr=log,
    )
    try:

        def listening_record() -> dict[str, object] | None:
            text = (tmp_path / "json.log").read_text()
            records = [json.loads(line) for line in text.splitlines() if line.endswith("}")]
            return next((r for r in records if r["event"] == "listening"), None)

        record = wait_until(listening_record, what="a JSON 'listening' log line")
        assert isinstance(record, dict)
        assert record["mode"] == "smtp"
        first = (tmp_path / "json.log").read_text().splitlines()[0]
        assert json.loads(first)["event"] == "control-listening"  # every line is JSON
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        log.close()


def test_check_config_names_the_bad_key(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nerrors = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "limits.errors" in result.stderr

    good = tmp_path / "good.toml"
    good.write_text('[server]\nhostname = "mx.example.test"\n')
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "check-config", "--config", str(good)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_bad_aliases_file_is_a_config_error(tmp_path) -> None:
    config = tmp_path / "p.toml"
    config.write_text('[server]\ndata_dir = "data"\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "aliases").write_text("ok: a\nbad: |/bin/sh\n")
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "aliases" in result.stderr and ":2" in result.stderr


def test_petrel_command_is_installed() -> None:
    petrel = shutil.which("petrel", path=str(sys.executable.rsplit("/", 1)[0]))
    assert petrel is not None
    result = subprocess.run([petrel, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("petrel ")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs to fill up."""
    with mounted_tmpfs(tmp_path / "small-disk", "2m") as mount_point:
        yield mount_point


def test_full_spool_disk_answers_452_and_keeps_what_was_accepted(
    small_disk: Path, petrel_factory
) -> None:
    server: PetrelServer = petrel_factory(
        "[limits]\nmessage_size = 50000000\n", data_dir=small_disk / "data"
    )
    _send(server, "early", "accepted before the disk filled")
    server.wait_for_messages("early")

    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("filler.test")
        client.mail("big@filler.test")
        client.rcpt(f"big@{HOSTNAME}")
        code, text = client.data(
            b"Subject: too big for the disk\r\n\r\n" + (b"z" * 998 + b"\r\n") * 3000
        )
        assert (code, text[:5]) == (452, b"4.3.1")
        # The session is still usable and a small message fits again.
        client.mail("small@filler.test")
        client.rcpt(f"small@{HOSTNAME}")
        code, _ = client.data(b"Subject: small\r\n\r\nfits\r\n")
        assert code == 250
    assert server.wait_for_messages("small")
    assert len(server.messages("early")) == 1
    assert server.messages("big") == []
    assert server.stop() == 0


def _queue_backlog(data_dir: Path, count: int) -> None:
    """What a crash under load leaves: ``count`` committed messages for one mailbox."""
    from petrel.queue import Envelope, Recipient, Spool, new_queue_id

    async def fill() -> None:
        spool = Spool(data_dir / "queue")
        spool.open()
        try:

            async def one(i: int) -> None:
                envelope = Envelope(
                    queue_id=new_queue_id(),
                    sender="sender@durable.test",
                    recipients=[Recipient(f"backlog@{HOSTNAME}")],
                    received_at=time.time(),
                )
                writer = spool.begin(envelope)
                writer.write(f"Subject: b{i}\r\n\r\nbacklog {i}\r\n".encode())
                await spool.commit(writer)

            await asyncio.gather(*(one(i) for i in range(count)))
        finally:
            spool.close()

    asyncio.run(fill())


def _recovered(server: PetrelServer) -> list[int]:
    return [int(n) for n in re.findall(r"event=ready .*recovered=(\d+)", server.log_text())]


def test_kill_9_during_a_backlog_drain_keeps_the_progress_made(petrel_factory) -> None:
    """Issue 14 #2: a delivered message's spool file goes with its batch, not at the end of
    the whole backlog, so each restart after a kill -9 starts from a smaller backlog; and
    nothing is lost or delivered twice across the kills."""
    total, batch = 3000, 256
    server: PetrelServer = petrel_factory()
    server.stop()
    _queue_backlog(server.data_dir, total)
    new = server.mailbox("backlog") / "new"
    backlogs = [total]
    for target in (1000, 2000):
        server.start()
        assert _recovered(server)[-1] == backlogs[-1]
        wait_until(lambda t=target: new.is_dir() and len(os.listdir(new)) >= t, timeout=60)
        server.kill()
        in_mailbox, left = len(os.listdir(new)), len(server.queue_files())
        # Files of delivered mail are gone but for the batches still being settled.
        assert left <= total - in_mailbox + 3 * batch, (left, in_mailbox)
        backlogs.append(left)
    server.start()
    assert _recovered(server)[-1] == backlogs[-1] < backlogs[-2] < total
    server.wait_for_messages("backlog", total, timeout=60)
    server.wait_queue_empty(timeout=60)
    subjects = [
        re.search(rb"Subject: (b\d+)", message)[1]  # type: ignore[index]
        for message in server.messages("backlog")
    ]
    assert len(subjects) == len(set(subjects)) == total  # none lost, none twice
