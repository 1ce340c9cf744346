"""Direct delivery: a local recipient's copy is in its Maildir when the client hears 250.

Up to ``delivery.direct`` (16) local recipients are written at intake, in the same sync
rounds as the spool; everything else (remote, LMTP, NOTIFY=SUCCESS, more recipients, a
mailbox that cannot be written) takes the queue as before. These tests check what the
250 means, that a failing mailbox never loses its copy, and kill -9 in the two windows
the order has (between the write and the rename, between the rename and the 250), made
exact by holding the server inside the rename with strace.
"""

from __future__ import annotations

import email
import shutil
import smtplib
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, mounted_tmpfs, wait_until

TEXT = b"Subject: direct\r\nMessage-ID: <d1@client.test>\r\n\r\nstraight in\r\n"


def _send(server: PetrelServer, recipients: list[str], **options: list[str]) -> str:
    """One transaction; the queue id from the 250."""
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("client.test")
        client.mail(f"alice@{HOSTNAME}", options.get("mail_options", []))
        for rcpt in recipients:
            code, text = client.rcpt(rcpt, options.get("rcpt_options", []))
            assert code == 250, text
        code, text = client.data(TEXT)
        assert code == 250, text
        return text.decode().split()[1]


def test_the_250_means_the_message_is_in_the_mailbox(petrel: PetrelServer) -> None:
    queue_id = _send(petrel, [f"bob@{HOSTNAME}", f"carol@{HOSTNAME}"])
    for user in ("bob", "carol"):  # no waiting: the copies were durable before the 250
        [message] = petrel.messages(user)
        assert message.startswith(f"Return-Path: <alice@{HOSTNAME}>\n".encode())
        assert f"Delivered-To: {user}@{HOSTNAME}\n".encode() in message
        assert b"straight in\n" in message and b"\r\n" not in message
        assert f"id {queue_id}".encode() in message
    assert petrel.queue_files() == []  # nothing was queued
    log = petrel.log_text()
    assert f"event=accepted queue_id={queue_id}" in log or f"queue_id={queue_id}" in log
    assert log.count("direct=yes") == 2
    assert petrel.petrel_cli("queue", "list").stdout.startswith("Mail queue is empty")


def test_a_mailbox_that_cannot_be_written_is_queued_and_the_others_delivered_at_once(
    petrel_factory,
) -> None:
    server: PetrelServer = petrel_factory('[queue]\nmin_backoff = "1s"\nmax_backoff = "1s"\n')
    blocker = server.mailbox("stuck")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a maildir")
    queue_id = _send(server, [f"ok@{HOSTNAME}", f"stuck@{HOSTNAME}"])
    assert len(server.messages("ok")) == 1  # at the 250
    assert server.queue_files() == [queue_id]  # the stuck copy went to the queue
    wait_until(lambda: "event=deferred" in server.log_text(), what="the stuck copy deferred")
    blocker.unlink()
    [message] = server.wait_for_messages("stuck")
    assert b"straight in" in message
    server.wait_queue_empty()
    assert len(server.messages("ok")) == 1  # never written twice


def test_a_full_mailbox_file_system_queues_that_copy_until_there_is_room(
    petrel_factory,
) -> None:
    server: PetrelServer = petrel_factory('[queue]\nmin_backoff = "1s"\nmax_backoff = "1s"\n')
    maildir = server.mailbox("full")
    maildir.parent.mkdir(parents=True, exist_ok=True)
    with mounted_tmpfs(maildir, "256k"):
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir()
        filler = maildir / "filler"
        with filler.open("wb") as out, pytest.raises(OSError):
            out.write(b"x" * (1 << 20))  # ENOSPC: the tmpfs is full
        queue_id = _send(server, [f"ok@{HOSTNAME}", f"full@{HOSTNAME}"])
        assert len(server.messages("ok")) == 1
        assert server.messages("full") == []
        assert server.queue_files() == [queue_id]
        filler.unlink()
        [message] = server.wait_for_messages("full")
        assert b"straight in" in message
        server.wait_queue_empty()
        assert list((maildir / "tmp").iterdir()) == []  # the failed attempt left nothing


def test_local_remote_and_lmtp_recipients_in_one_transaction(petrel_factory) -> None:
    remote = petrel_factory('[domains]\nlocal = ["remote.test"]\n', name="remote")
    lmtp = petrel_factory(
        '[domains]\nlocal = ["box.test"]\n\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "lmtp"\n',
        name="lmtp",
    )
    server: PetrelServer = petrel_factory(
        f"""
[domains]
relay_networks = ["127.0.0.0/8"]

[domains.lmtp]
"box.test" = "127.0.0.1:{lmtp.ports["lmtp"]}"

[delivery]
dns = false
hosts = {{ "remote.test" = ["127.0.0.1:{remote.port}"] }}
""",
        name="mixed",
    )
    _send(server, [f"bob@{HOSTNAME}", "rita@remote.test", "lou@box.test"])
    assert len(server.messages("bob")) == 1  # local: at the 250
    assert b"straight in" in remote.wait_for_messages("rita", domain="remote.test")[0]
    assert b"with LMTP" in lmtp.wait_for_messages("lou", domain="box.test")[0]
    server.wait_queue_empty()
    assert len(server.messages("bob")) == 1


def test_an_alias_to_local_and_remote_addresses(petrel_factory) -> None:
    remote = petrel_factory('[domains]\nlocal = ["remote.test"]\n', name="remote")
    server: PetrelServer = petrel_factory(
        f"""
[delivery]
dns = false
hosts = {{ "remote.test" = ["127.0.0.1:{remote.port}"] }}
""",
        name="aliased",
    )
    (server.data_dir / "aliases").write_text("team: dana, dan@remote.test\n")
    _send(server, [f"team@{HOSTNAME}"])
    [local] = server.messages("dana")
    assert b"Delivered-To: dana@" in local
    [relayed] = remote.wait_for_messages("dan", domain="remote.test")
    assert b"straight in" in relayed
    server.wait_queue_empty()


def test_notify_success_for_a_local_recipient_still_gets_its_success_notice(
    petrel: PetrelServer,
) -> None:
    _send(petrel, [f"bob@{HOSTNAME}"], mail_options=["RET=HDRS"], rcpt_options=["NOTIFY=SUCCESS"])
    [message] = petrel.wait_for_messages("bob")
    assert b"straight in" in message
    [raw] = petrel.wait_for_messages("alice")
    report = email.message_from_bytes(raw)
    assert report.get_content_type() == "multipart/report"
    status = report.get_payload()[1].get_payload()[1]
    assert status["Action"] == "delivered"
    assert status["Final-Recipient"] == f"rfc822; bob@{HOSTNAME}"


def test_more_local_recipients_than_the_bound_take_the_queue(petrel: PetrelServer) -> None:
    users = [f"u{i}@{HOSTNAME}" for i in range(20)]
    _send(petrel, users)
    for i in range(20):
        petrel.wait_for_messages(f"u{i}")
    petrel.wait_queue_empty()
    log = petrel.log_text()
    assert log.count("event=delivered") == 20
    assert "direct=yes" not in log  # all twenty went through the queue


def test_direct_zero_sends_everything_through_the_queue(petrel_factory) -> None:
    server: PetrelServer = petrel_factory("[delivery]\ndns = false\ndirect = 0\n")
    _send(server, [f"bob@{HOSTNAME}"])
    server.wait_for_messages("bob")
    assert "direct=yes" not in server.log_text()


# -- kill -9 inside the two windows -------------------------------------------------------


def _under_strace(server: PetrelServer, inject: str) -> None:
    """Restart ``server`` with its Maildir renames (renameat; the spool uses rename)
    held for a minute by strace: the test kills it inside the window it wants."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    server.stop()
    server.wrapper = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=renameat",
        "-e",
        f"inject=renameat:{inject}=60000000",
    ]
    server.start()


def _petrel_pid(server: PetrelServer) -> int:
    assert server.process is not None
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    [pid] = children.read_text().split()
    return int(pid)


def _send_in_background(server: PetrelServer) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def send() -> None:
        try:
            with smtplib.SMTP(server.host, server.port, timeout=90) as client:
                outcome.append(client.sendmail(f"alice@{HOSTNAME}", [f"bob@{HOSTNAME}"], TEXT))
        except (smtplib.SMTPException, OSError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, outcome


def _kill_when(server: PetrelServer, ready, what: str) -> None:
    wait_until(ready, timeout=30, what=what)
    subprocess.run(["kill", "-9", str(_petrel_pid(server))], check=True)
    assert server.process is not None
    server.process.kill()  # strace too, which would sit out its delay
    server.process.wait(timeout=30)
    server.process = None
    server.wrapper = []


def test_kill_9_between_the_write_and_the_rename_acknowledges_nothing(petrel) -> None:
    _under_strace(petrel, "delay_enter")
    thread, outcome = _send_in_background(petrel)
    tmp = petrel.mailbox("bob") / "tmp"
    _kill_when(petrel, lambda: tmp.is_dir() and any(tmp.iterdir()), "the copy in tmp/")
    thread.join(timeout=60)
    [result] = outcome
    assert isinstance(result, (smtplib.SMTPException, OSError))  # never a 250
    petrel.start()
    assert petrel.messages("bob") == []  # not acknowledged, not delivered
    assert petrel.queue_files() == []


def test_kill_9_between_the_rename_and_the_250_loses_nothing(petrel) -> None:
    _under_strace(petrel, "delay_exit")
    thread, outcome = _send_in_background(petrel)
    new = petrel.mailbox("bob") / "new"
    _kill_when(petrel, lambda: new.is_dir() and any(new.iterdir()), "the copy in new/")
    thread.join(timeout=60)
    [result] = outcome
    assert isinstance(result, (smtplib.SMTPException, OSError))  # the 250 never went out
    petrel.start()
    [message] = petrel.messages("bob")  # in the mailbox, once
    assert b"straight in" in message
    assert petrel.queue_files() == []
    with socket.create_connection((petrel.host, petrel.port), timeout=10) as sock:
        assert sock.recv(512).startswith(b"220 ")  # and the server is back
