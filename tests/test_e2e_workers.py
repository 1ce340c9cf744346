"""``server.workers = 2``: two accepting processes, one queue manager, one spool.

Real ``petrel serve`` runs; which worker served a session is read from its log lines
(every line of a worker carries ``worker=N``). No timing assertions: every wait is a
bounded poll for an observable result.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from email.parser import BytesParser
from pathlib import Path

from conftest import HOSTNAME, PetrelServer, RawClient, etrn_conversation, wait_until

_STARTED = re.compile(r"event=worker-started worker=(\d+) pid=(\d+)")
_CONNECT_BY = re.compile(r"event=connect .* worker=(\d+)")


def _workers(petrel_factory: Callable[..., PetrelServer], **kwargs: str) -> PetrelServer:
    server = petrel_factory(server_config="workers = 2", **kwargs)
    wait_until(
        lambda: server.log_text().count("event=worker-ready") >= 2, what="both workers ready"
    )
    return server


def _live_pids(server: PetrelServer) -> dict[int, int]:
    """worker number -> pid of its latest start."""
    return {int(n): int(pid) for n, pid in _STARTED.findall(server.log_text())}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _send(server: PetrelServer, subject: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail(
            "alice@client.test",
            [f"bob@{HOSTNAME}"],
            f"From: alice@client.test\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n",
        )


def _subjects(server: PetrelServer) -> list[str]:
    return sorted(
        str(BytesParser().parsebytes(raw, headersonly=True)["Subject"])
        for raw in server.messages("bob")
    )


def test_mail_over_many_connections_is_delivered_exactly_once_by_both_workers(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _workers(petrel_factory)
    pids = _live_pids(server)
    assert sorted(pids) == [1, 2]
    for pid in pids.values():  # children of the server, not of the test
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().split(") ", 1)[1].split()[1]) == server.process.pid  # type: ignore[union-attr]
    subjects = [f"m{i:02d}" for i in range(20)]
    for subject in subjects:
        _send(server, subject)
    server.wait_for_messages("bob", len(subjects))
    server.wait_queue_empty()
    assert _subjects(server) == subjects  # each once, none twice

    # The kernel picks the worker for each connection: open more (held open, so the
    # busy worker is not the only one waiting in accept) until both have served.
    held: list[socket.socket] = []
    try:
        for _ in range(200):
            if set(_CONNECT_BY.findall(server.log_text())) == {"1", "2"}:
                break
            sock = server.connect()
            sock.recv(512)  # the greeting: the session has started in some worker
            held.append(sock)
        assert set(_CONNECT_BY.findall(server.log_text())) == {"1", "2"}
    finally:
        for sock in held:
            sock.close()


def test_sendmail_and_reload_reach_the_workers_setup(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _workers(petrel_factory)
    result = server.petrel_cli(
        "sendmail", "-f", "root@client.test", f"bob@{HOSTNAME}", stdin="Subject: local\n\nhi\n"
    )
    assert result.returncode == 0, result.stderr
    server.wait_for_messages("bob", 1)
    assert server.petrel_cli("reload").returncode == 0
    wait_until(
        lambda: (
            {"1", "2"} <= set(re.findall(r"event=tls-reloaded worker=(\d+)", server.log_text()))
        ),
        what="both workers to reload TLS",
    )


def test_sigterm_stops_the_workers_and_exits_zero(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _workers(petrel_factory)
    pids = list(_live_pids(server).values())
    _send(server, "before-stop")
    server.wait_for_messages("bob", 1)
    assert server.stop() == 0
    assert not [pid for pid in pids if _alive(pid)], "worker processes outlived the server"
    assert server.log_text().count("event=worker-stopped") == 2


def test_a_killed_worker_is_restarted_and_service_continues(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _workers(petrel_factory)
    victim = _live_pids(server)[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: _live_pids(server)[1] != victim, what="worker 1 to be restarted")
    assert f"event=worker-exited worker=1 pid={victim} status=-9" in server.log_text()
    wait_until(
        lambda: server.log_text().count("event=worker-ready") >= 3, what="the new worker ready"
    )
    assert _alive(_live_pids(server)[1])
    subjects = [f"after{i}" for i in range(6)]
    for subject in subjects:
        _send(server, subject)
    server.wait_for_messages("bob", len(subjects))
    server.wait_queue_empty()
    assert _subjects(server) == subjects
    pids = list(_live_pids(server).values())
    assert server.stop() == 0
    assert not [pid for pid in pids if _alive(pid)]


def test_etrn_in_a_worker_answers_as_one_process_does(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    """The worker asks the parent's queue manager: the same answers as one process."""
    server = _workers(petrel_factory, extra_config='[domains]\nrelay_networks = ["127.0.0.1/32"]\n')
    etrn_conversation(server)
    assert re.search(r"event=etrn node=elsewhere.test reply=250(?! worker)", server.log_text())


def test_mail_delivered_under_load_with_workers_is_never_requeued_nor_bounced(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    """Issue 14 #1: a delivered message's spool file lingered after the manager forgot it,
    the parent's pickup scan took it for new mail, and the retries ended in 4.4.7 bounces."""
    server = _workers(
        petrel_factory,
        extra_config='[queue]\nmin_backoff = "1s"\nmax_backoff = "2s"\nlifetime = "20s"\n',
    )
    senders, per_sender = 10, 400

    def burst(n: int) -> None:
        with smtplib.SMTP(server.host, server.port, timeout=30) as client:
            for i in range(per_sender):
                client.sendmail(
                    f"s{n}@client.test",
                    [f"bob@{HOSTNAME}"],
                    f"From: s{n}@client.test\r\nSubject: s{n}-{i}\r\n\r\nbody\r\n",
                )

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    total = senders * per_sender
    server.wait_for_messages("bob", total, timeout=60)
    server.wait_queue_empty(timeout=60)
    # A file left behind after the manager forgot its message is found by the parent's
    # scan (every 2 s): one more message after the drain spans at least one more scan.
    marker = "after-the-drain"
    _send(server, marker)
    server.wait_for_messages("bob", total + 1, timeout=30)
    wait_until(
        lambda: "Mail queue is empty" in server.petrel_cli("queue", "list").stdout,
        timeout=30,
        what="the manager to hold no request",
    )
    log = server.log_text()
    assert "event=deferred" not in log
    assert "event=failed" not in log
    assert "event=notice " not in log
    assert len(server.messages("bob")) == total + 1
    assert not os.listdir(server.data_dir / "queue" / "state")  # no orphan state files


# -- the AUTH throttle and the SCRAM decoys are one for all workers (issue 14) -------------

_CONNECT_FROM = re.compile(r"event=connect \S+ client=127\.0\.0\.1:(\d+) .*worker=(\d+)")
_AUTH = """
[auth]
allow_plaintext_auth = true
max_failures = 4
"""


def _connections_in_both_workers(server: PetrelServer, each: int) -> dict[str, list[RawClient]]:
    """Held-open connections, greeted, until each worker serves ``each`` of them."""
    by_worker: dict[str, list[RawClient]] = {"1": [], "2": []}
    pending: dict[int, RawClient] = {}
    for _ in range(200):
        if min(len(clients) for clients in by_worker.values()) >= each:
            break
        client = RawClient(server.connect())
        assert client.reply()[0].startswith("220")
        pending[client.sock.getsockname()[1]] = client
        for port, worker in _CONNECT_FROM.findall(server.log_text()):
            if int(port) in pending:
                by_worker[worker].append(pending.pop(int(port)))
    assert min(len(clients) for clients in by_worker.values()) >= each, "a worker got none"
    return by_worker


def test_workers_share_one_auth_failure_budget(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _workers(petrel_factory, extra_config=_AUTH)
    server.add_user(f"willie@{HOSTNAME}", "funsmtp")
    by_worker = _connections_in_both_workers(server, 4)
    wrong = base64.b64encode(f"\0willie@{HOSTNAME}\0nope".encode()).decode()
    replies = []
    for n in range(8):  # one guess per connection, the workers taking turns
        client = by_worker[str(n % 2 + 1)][n // 2]
        client.command("EHLO c.test")
        replies.append(client.command(f"AUTH PLAIN {wrong}")[0])
    assert [reply[:9] for reply in replies] == ["535 5.7.8"] * 3 + ["421 4.7.0"] * 5, replies


def test_workers_give_an_unknown_user_the_same_scram_salt(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _workers(petrel_factory, extra_config=_AUTH)
    by_worker = _connections_in_both_workers(server, 1)
    first = base64.b64encode(b"n,,n=nobody,r=clientnonce1234").decode()
    salts = set()
    for clients in by_worker.values():
        clients[0].command("EHLO c.test")
        [challenge] = clients[0].command(f"AUTH SCRAM-SHA-256 {first}")
        assert challenge.startswith("334 ")
        salts.add(base64.b64decode(challenge[4:]).decode().split(",")[1])
    assert len(salts) == 1, salts


def test_a_worker_whose_parent_died_while_it_started_stops_by_itself(tmp_path: Path) -> None:
    """A parent killed while its worker was still starting leaves the worker to init
    before it could note its parent's pid: the worker must compare against the pid the
    parent gave it, or it would serve on alone, for ever. Made exact by starting a
    worker the way the parent does, naming a parent that is not its parent."""
    config = tmp_path / "petrel.toml"
    config.write_text(
        f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "{tmp_path / "data"}"\n'
        'reverse_dns = false\n\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "smtp"\n'
    )
    assert subprocess.run(
        [sys.executable, "-m", "petrel", "check-config", "--config", str(config)],
        capture_output=True,
        check=False,
    ).returncode == 0
    (tmp_path / "data").mkdir(mode=0o700, exist_ok=True)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        env = {
            **os.environ,
            "PETREL_WORKER_FDS": f"0:{listening.fileno()}",
            "PETREL_PARENT_PID": "1",  # not this worker's parent: as after an early death
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "petrel", "serve", "--config", str(config), "--worker", "1"],
            env=env,
            pass_fds=[listening.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            out, _ = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
    text = out.decode(errors="replace")
    assert "event=parent-gone" in text, text
    assert worker.returncode == 0
