"""``petrel queue …`` against a running server (control socket) and a stopped spool.

Mail waits in the queue for real: remote recipients (relay_networks lets us send
them) are kept until remote delivery exists, and a local mailbox path blocked by
a plain file defers local delivery with an OS error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import smtplib
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until
from petrel.config import load_config
from petrel.delivery.manager import QueueManager
from petrel.dns import Resolver
from petrel.policy import Policy
from petrel.policy.aliases import Aliases
from petrel.queue import Envelope, Recipient, Spool, new_queue_id
from petrel.queue.admin import LIST_HEADER, SpoolAdmin, execute, format_list

RELAY = '[domains]\nrelay_networks = ["127.0.0.1/32"]\n'
SRC = Path(__file__).resolve().parents[1] / "src"


def send(server: PetrelServer, rcpt: str, subject: str, sender: str = "app@relay.test") -> str:
    """Send one message; returns its queue id."""
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("relay.test")
        client.mail(sender)
        client.rcpt(rcpt)
        code, text = client.data(f"Subject: {subject}\r\n\r\nwaiting\r\n".encode())
        assert code == 250
        return text.decode().split()[1]


def queue(server: PetrelServer, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``petrel queue ARGS`` as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "petrel", "queue", *args, "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def state(server: PetrelServer, queue_id: str) -> dict | None:
    path = server.data_dir / "queue" / "state" / queue_id
    return json.loads(path.read_text()) if path.exists() else None


def attempts(server: PetrelServer, queue_id: str) -> int:
    data = state(server, queue_id)
    return data["recipients"][0]["attempts"] if data else 0


def block_mailbox(server: PetrelServer, user: str) -> Path:
    blocker = server.mailbox(user)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a maildir")  # delivery fails with an OS error: deferred
    return blocker


def control_socket(server: PetrelServer) -> Path:
    return server.data_dir / "control" / "petrel.sock"


# -- against the running server ------------------------------------------------------------


def test_list_show_hold_release_flush_delete_on_running_server(petrel_factory) -> None:
    server: PetrelServer = petrel_factory(RELAY)
    first = send(server, "bob@elsewhere.test", "first")
    second = send(server, "carol@other.test", "second", sender="")
    wait_until(lambda: attempts(server, first) and attempts(server, second), what="deferrals")

    listed = queue(server, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == LIST_HEADER
    assert re.fullmatch(
        rf"{first} +\d+ \w{{3}} \w{{3}} [ \d]\d \d\d:\d\d:\d\d  app@relay\.test", lines[1]
    )
    # Every column under its heading, with 14-character ids and a flag (issue 15)
    assert lines[1].index(" app@relay.test") + 1 == LIST_HEADER.index("-Sender")
    assert lines[1][LIST_HEADER.index("--Size--") - 1] == " "
    assert lines[1][LIST_HEADER.index("----Arrival") :].startswith(
        ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    )
    error = " " * 45 + "(No route to elsewhere.test: DNS is off (delivery.dns = false))"
    assert lines[2:4] == [error, " " * 45 + "bob@elsewhere.test"]
    assert lines[4] == ""
    assert lines[5].startswith(second) and lines[5].endswith("  MAILER-DAEMON")
    assert lines[-1] == "-- 1 Kbytes in 2 Requests."

    shown = queue(server, "show", first.lower())  # ids are case-insensitive for operators
    assert shown.returncode == 0, shown.stderr
    assert f"Queue ID:  {first}\n" in shown.stdout
    assert "Sender:    <app@relay.test>\n" in shown.stdout
    assert "  bob@elsewhere.test (deferred, 1 attempt, next " in shown.stdout
    assert "\nHeaders:\nReceived: from relay.test" in shown.stdout
    assert "Subject: first\n" in shown.stdout

    # hold: the running manager skips it (flush finds only the other one) and it is saved
    assert queue(server, "hold", first).stdout == f"petrel: {first}: placed on hold\n"
    assert queue(server, "hold", first).stdout == f"petrel: {first}: already on hold\n"
    assert state(server, first)["hold"] is True
    assert f"\n{first}! " in queue(server, "list").stdout
    assert queue(server, "flush").stdout == "petrel: 1 message to be tried now\n"
    wait_until(lambda: attempts(server, second) == 2, what="the flushed retry")
    assert queue(server, "flush", "elsewhere.test").stdout.startswith("petrel: 0 messages")
    assert attempts(server, first) == 1

    # release, then flush by domain reaches it
    assert queue(server, "release", first).stdout == f"petrel: {first}: released from hold\n"
    assert state(server, first)["hold"] is False
    assert queue(server, "flush", "elsewhere.test").stdout.startswith("petrel: 1 message ")
    wait_until(lambda: attempts(server, first) == 2, what="the retry after release")
    assert attempts(server, second) == 2

    # delete one, then ALL; the manager forgets them too (a flush finds nothing)
    assert queue(server, "delete", first).stdout == f"petrel: {first}: removed\n"
    assert server.queue_files() == [second]
    assert f"event=deleted queue_id={first} by=operator" in server.log_text()
    gone = queue(server, "show", first)
    assert (gone.returncode, gone.stderr) == (1, f"petrel: {first}: no such message\n")
    assert queue(server, "delete", "ALL").stdout.endswith("petrel: Deleted: 1 message\n")
    assert server.queue_files() == []
    assert queue(server, "list").stdout == f"Mail queue is empty ({server.data_dir})\n"
    assert queue(server, "flush").stdout.startswith("petrel: 0 messages")
    assert server.stop() == 0


def test_exit_codes(petrel: PetrelServer) -> None:
    assert queue(petrel, "hold", "0000000000000A").returncode == 1
    assert queue(petrel, "release", "not-an-id").returncode == 1
    assert queue(petrel, "delete", "0000000000000A").returncode == 1
    usage = queue(petrel, "show")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    assert queue(petrel, "frobnicate").returncode == 2
    bad = subprocess.run(
        [sys.executable, "-m", "petrel", "queue", "list", "--config", "/nonexistent.toml"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cannot read config file" in bad.stderr


def test_control_socket_is_owner_only_and_speaks_json_lines(petrel: PetrelServer) -> None:
    path = control_socket(petrel)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o700

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        for request in (b'{"op": "list"}\n', b"not json\n", b'{"op": "show"}\n', b"[1]\n"):
            stream.write(request)
        stream.flush()
        answers = [json.loads(stream.readline()) for _ in range(4)]
    assert answers[0] == {"ok": True, "messages": []}
    assert [a["error"] for a in answers[1:]] == ["bad-request"] * 3
    assert petrel.stop() == 0
    assert not path.exists()  # removed at shutdown: the CLI then works on the files


def test_deep_data_dir_beyond_sun_path(petrel_factory, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server: PetrelServer = petrel_factory(RELAY, data_dir=deep / "data")
    assert len(os.fsencode(control_socket(server))) > 108
    queue_id = send(server, "bob@elsewhere.test", "deep")
    assert queue(server, "hold", queue_id).stdout.endswith("placed on hold\n")
    assert "event=held" in server.log_text()  # it went through the socket


def test_stale_socket_from_a_killed_server(petrel_factory) -> None:
    server: PetrelServer = petrel_factory(RELAY)
    queue_id = send(server, "bob@elsewhere.test", "stale")
    server.kill()
    assert control_socket(server).exists()  # nobody removed it
    held = queue(server, "hold", queue_id)  # refused connection: work on the files
    assert held.returncode == 0 and state(server, queue_id)["hold"] is True
    server.start()  # replaces the stale socket
    assert server.log_text().count("event=control-listening") == 2
    assert f"\n{queue_id}! " in queue(server, "list").stdout


# -- on a stopped spool ------------------------------------------------------------------


def test_stopped_spool_hold_delete_flush_then_restart(petrel_factory) -> None:
    server: PetrelServer = petrel_factory(RELAY)  # default backoff: 5 minutes
    blockers = [block_mailbox(server, "kept"), block_mailbox(server, "dropped")]
    kept = send(server, f"kept@{HOSTNAME}", "kept")
    dropped = send(server, f"dropped@{HOSTNAME}", "dropped")
    remote = send(server, "bob@elsewhere.test", "remote")
    wait_until(lambda: all(attempts(server, i) for i in (kept, dropped, remote)), what="deferrals")
    assert server.stop() == 0
    assert not control_socket(server).exists()

    listed = queue(server, "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines() if line[:1].isalnum()] == [
        kept,
        dropped,
        remote,
    ]
    assert "-- 1 Kbytes in 3 Requests." in listed.stdout
    shown = queue(server, "show", kept)
    assert shown.returncode == 0 and "Subject: kept\n" in shown.stdout
    assert "kept@mx.petrel.test (deferred, 1 attempt" in shown.stdout

    assert queue(server, "delete", dropped).stdout == f"petrel: {dropped}: removed\n"
    flushed = queue(server, "flush")
    assert flushed.stdout == "petrel: 2 messages to be tried when the server starts\n"
    assert queue(server, "hold", kept).stdout == f"petrel: {kept}: placed on hold\n"
    assert queue(server, "show", dropped).returncode == 1
    for blocker in blockers:
        blocker.unlink()

    server.start()
    # The flush made everything due at once; the held message must still wait.
    wait_until(lambda: attempts(server, remote) == 2, what="the flushed remote retry")
    assert sorted(server.queue_files()) == sorted([kept, remote])
    assert server.messages("kept") == [] and server.messages("dropped") == []
    assert f"\n{kept}! " in queue(server, "list").stdout

    # Releasing it on the running server delivers it at once (it was made due by flush).
    assert queue(server, "release", kept).stdout.endswith("released from hold\n")
    [message] = server.wait_for_messages("kept")
    assert b"Subject: kept" in message
    wait_until(lambda: server.queue_files() == [remote], what="the delivered message to leave")
    assert server.messages("dropped") == []


def test_empty_or_missing_spool(tmp_path: Path) -> None:
    admin = SpoolAdmin(Spool(tmp_path / "never-started" / "queue"))
    assert execute(admin, {"op": "list"}) == {"ok": True, "messages": []}
    assert execute(admin, {"op": "delete", "id": "ALL"}) == {
        "ok": True,
        "removed": [],
        "pending": [],
    }
    assert execute(admin, {"op": "hold", "id": "0000000000000A"})["error"] == "unknown"
    assert execute(admin, {"op": "flush", "domain": ""})["error"] == "bad-request"
    assert execute(admin, {"op": "nope"})["error"] == "bad-request"
    assert format_list([]) == "Mail queue is empty\n"


# -- the mailq layout --------------------------------------------------------------------


def _info(queue_id: str, size: int, **fields: object) -> dict:
    info = {
        "queue_id": queue_id,
        "sender": "a@b.test",
        "received_at": time.mktime((2026, 11, 22, 9, 5, 7, 0, 0, -1)),
        "size": size,
        "hold": False,
        "active": False,
        "recipients": [],
    }
    info.update(fields)
    return info


def _rcpt(address: str, state: str = "deferred", error: str | None = "4.4.1 timeout") -> dict:
    return Recipient(address, state=state, last_error=error).to_dict()


def test_format_list_groups_errors_and_marks_held_and_active() -> None:
    text = format_list(
        [
            _info(
                "1K0V8G4A2SAQFN",
                900,
                hold=True,
                recipients=[
                    _rcpt("x@one.test"),
                    _rcpt("y@one.test"),
                    _rcpt("done@one.test", state="delivered", error=None),
                    _rcpt("z@two.test", error="5.7.1 no"),
                    _rcpt("new@two.test", state="pending", error=None),
                ],
            ),
            _info("1K0V8G4A2SAQFP", 1200, active=True, sender=""),
        ]
    )
    pad = " " * 45
    assert LIST_HEADER == ("-Queue ID-      --Size-- ----Arrival Time---- -Sender/Recipient-------")
    assert text == (
        f"{LIST_HEADER}\n"
        "1K0V8G4A2SAQFN!      900 Sun Nov 22 09:05:07  a@b.test\n"
        f"{pad}(4.4.1 timeout)\n{pad}x@one.test\n{pad}y@one.test\n"
        f"{pad}(5.7.1 no)\n{pad}z@two.test\n{pad}new@two.test\n"
        "\n"
        "1K0V8G4A2SAQFP*     1200 Sun Nov 22 09:05:07  MAILER-DAEMON\n"
        "\n"
        "-- 3 Kbytes in 2 Requests.\n"
    )


# -- the manager: a delete never races with a batch ----------------------------------------


def test_delete_during_a_delivery_batch_waits_for_it(tmp_path: Path) -> None:
    config_path = tmp_path / "petrel.toml"
    config_path.write_text(f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "data"\n')
    config = load_config(config_path)

    async def scenario() -> None:
        spool = Spool(config.server.data_dir / "queue")
        spool.open()
        envelope = Envelope(new_queue_id(), "a@b.test", [Recipient("x@far.test")], time.time())
        writer = spool.begin(envelope)
        writer.write(b"Subject: s\r\n\r\nbody\r\n")
        await spool.commit(writer)
        policy = Policy(config, Aliases.load(config.aliases.file))
        manager = QueueManager(config, spool, policy, Resolver(config.dns))
        admin = manager.admin
        manager.submit(envelope)  # tracked and ready, but no loop running
        batch = manager._take_batch()
        assert [t.envelope for t in batch] == [envelope] and admin.snapshot()[0]["active"] is True

        assert admin.delete(envelope.queue_id) is False  # in flight: only marked
        assert admin.hold(envelope.queue_id) is True
        assert spool.list_ids() == [envelope.queue_id]
        assert manager._settle(batch[0]) is None  # the batch ends; the delete acts now
        assert spool.list_ids() == [] and admin.snapshot() == []
        with pytest.raises(LookupError):
            admin.describe(envelope.queue_id)
        manager.local.close()
        spool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("action", ["list", "flush"])
def test_queue_subcommand_takes_config_before_or_after(tmp_path: Path, action: str) -> None:
    config_path = tmp_path / "petrel.toml"
    config_path.write_text('[server]\ndata_dir = "data"\n')
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for args in (["--config", str(config_path), action], [action, "--config", str(config_path)]):
        done = subprocess.run(
            [sys.executable, "-m", "petrel", "queue", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    assert not (tmp_path / "petrel-data").exists()  # the config's data_dir was used


def test_second_server_on_the_same_data_dir_refuses_to_start(
    petrel_factory, tmp_path: Path
) -> None:
    """Two servers on one spool would recover it under each other: the second one exits."""
    first: PetrelServer = petrel_factory(RELAY, name="first", data_dir=tmp_path / "shared")
    queue_id = send(first, "bob@elsewhere.test", "shared")
    second = PetrelServer(tmp_path / "second", RELAY, tmp_path / "shared")
    (tmp_path / "second").mkdir()
    second.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "serve", "--config", str(second.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "event=already-running" in result.stderr
    assert control_socket(first).exists()  # still the first server's
    assert first.queue_files() == [queue_id]  # its spool untouched
    assert queue(first, "hold", queue_id).returncode == 0
    assert "event=held" in first.log_text()
