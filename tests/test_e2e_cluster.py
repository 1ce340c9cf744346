"""Several real ``petrel serve`` nodes sharing one queue on a real PostgreSQL.

The database is the private one of `pg_server` (a database per test); the nodes relay
to a recording SMTP sink (`ScriptedPeer`) this test runs. Every acknowledged message
must arrive exactly once, whatever node took it and whatever node died.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import HOSTNAME, PetrelServer, wait_until
from petrel.queue.pg import migrate
from petrel.smtp import EndOfData, Rcpt, reply
from pg_server import PgServer
from smtp_peer import PeerScript, ScriptedPeer
from test_e2e_proxy import free_port, proxy_port

_MESSAGE_ID = re.compile(rb"Message-ID: <([^>]+)>")


@pytest.fixture
def sink() -> Iterator[ScriptedPeer]:
    peer = ScriptedPeer(PeerScript()).start()
    yield peer
    peer.stop()


def node_config(
    dsn: str, node: str, sink_port: int, extra: str = "", backoff: str = "1s"
) -> str:
    return f"""
[domains]
relay_networks = ["127.0.0.0/8"]

[delivery]
dns = false
hosts = {{ "sink.test" = ["127.0.0.1:{sink_port}"], "later.test" = ["127.0.0.1:{sink_port}"] }}
connect_timeout = "2s"
command_timeout = "60s"

[queue]
backend = "postgresql"
dsn = "{dsn}"
node = "{node}"
lease = "3s"
min_backoff = "{backoff}"
max_backoff = "{backoff}"
{extra}
"""


def send(server: PetrelServer, tag: str, rcpt: str = "bob@sink.test") -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.sendmail(
            f"alice@{HOSTNAME}",
            [rcpt],
            f"Subject: {tag}\r\nMessage-ID: <{tag}@client.test>\r\n\r\nbody {tag}\r\n".encode(),
        )


def delivered_ids(peer: ScriptedPeer) -> Counter[str]:
    ids: Counter[str] = Counter()
    for message in list(peer.messages):
        found = _MESSAGE_ID.search(message.data)
        assert found is not None
        ids[found[1].decode()] += 1
    return ids


def queue_list(server: PetrelServer) -> str:
    result = server.petrel_cli("queue", "list")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def cluster(
    petrel_factory: Callable[..., PetrelServer], pg_dsn: str, sink: ScriptedPeer
) -> Callable[..., PetrelServer]:
    """Start a node on the test's database (migrated once) relaying to ``sink``."""
    migrate(pg_dsn)

    def start(node: str, extra: str = "", backoff: str = "1s") -> PetrelServer:
        return petrel_factory(node_config(pg_dsn, node, sink.port, extra, backoff), name=node)

    return start


def test_three_nodes_receive_and_deliver_every_message_exactly_once(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer
) -> None:
    nodes = [cluster("node-a"), cluster("node-b"), cluster("node-c")]
    a = nodes[0]
    tags = [f"m{i}" for i in range(18)]
    threads = [
        threading.Thread(target=send, args=(nodes[i % 3], tag)) for i, tag in enumerate(tags)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    wait_until(lambda: len(sink.messages) >= len(tags), 60, "every message at the sink")
    assert delivered_ids(sink) == Counter({f"{tag}@client.test": 1 for tag in tags})
    wait_until(lambda: "Mail queue is empty" in queue_list(a), 30, "the shared queue to drain")


def test_kill_9_mid_delivery_another_node_delivers_after_the_lease(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer, pg_dsn: str, tmp_path
) -> None:
    sink.script.stall_on = EndOfData  # node A's attempts hang after the text
    a = cluster("node-a")
    tags = [f"k{i}" for i in range(4)]
    for tag in tags:
        send(a, tag)
    wait_until(lambda: sink.connections >= 1, 30, "node A to be delivering")
    wait_until(
        lambda: queue_list(a).count("(leased by node-a until") == len(tags),
        30,
        "node A to hold every lease",
    )
    status = a.petrel_cli("status")
    assert status.returncode == 0, status.stderr
    assert f"leases held: node-a {len(tags)}" in status.stdout
    # another node's view of the cluster: which node holds which message
    (tmp_path / "observer").mkdir()
    observer = PetrelServer(tmp_path / "observer", node_config(pg_dsn, "observer", sink.port))
    observer.write_config()
    assert queue_list(observer).count("(leased by node-a until") == len(tags)
    first = queue_list(observer).split()[6].rstrip("*")  # the first id; * is "active"
    shown = observer.petrel_cli("queue", "show", first)
    assert shown.returncode == 0 and "Lease:     node-a until" in shown.stdout, shown
    a.kill()  # kill -9 in the middle of its attempts: no outcome recorded
    sink.script.stall_on = None
    b = cluster("node-b")
    wait_until(lambda: len(delivered_ids(sink)) >= len(tags), 60, "node B to deliver them")
    assert delivered_ids(sink) == Counter({f"{tag}@client.test": 1 for tag in tags})
    assert "event=lease-taken-over" in b.log_text()
    wait_until(lambda: "Mail queue is empty" in queue_list(b), 30, "the queue to drain")


def test_flush_and_etrn_racing_on_two_nodes_deliver_each_once(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer
) -> None:
    sink.script.policy = {Rcpt: lambda event: reply(451, "4.7.1", "not now")}
    # deferred for an hour: only the flush and the ETRN below can bring them out now
    a = cluster("node-a", backoff="1h")
    b = cluster("node-b", backoff="1h")
    tags = [f"f{i}" for i in range(6)]
    for i, tag in enumerate(tags):
        send(a if i % 2 else b, tag, rcpt="carol@later.test")
    wait_until(
        lambda: (a.log_text() + b.log_text()).count("event=deferred") >= len(tags),
        60,
        "every message deferred once",
    )
    sink.script.policy = {}
    flushed: list[subprocess.CompletedProcess[str]] = []
    etrn_replies: list[tuple[int, bytes]] = []

    def flush() -> None:
        flushed.append(a.petrel_cli("queue", "flush", "later.test"))

    def etrn() -> None:
        with smtplib.SMTP(b.host, b.port, timeout=30) as client:
            client.ehlo("client.test")
            etrn_replies.append(client.docmd("ETRN", "later.test"))

    racers = [threading.Thread(target=flush), threading.Thread(target=etrn)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    assert flushed[0].returncode == 0, flushed[0].stderr
    assert etrn_replies[0][0] in (250, 251)
    wait_until(lambda: len(delivered_ids(sink)) >= len(tags), 60, "every message delivered")
    wait_until(lambda: "Mail queue is empty" in queue_list(a), 30, "the queue to drain")
    assert delivered_ids(sink) == Counter({f"{tag}@client.test": 1 for tag in tags})


def test_unreachable_database_at_start_is_one_line(
    petrel_factory: Callable[..., PetrelServer], tmp_path, sink: ScriptedPeer
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    server = PetrelServer(tmp_path, node_config(f"postgresql://petrel@127.0.0.1:{port}/x", "n", 1))
    server.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "serve", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "queue-store-unavailable" in lines[0] and "cannot connect to PostgreSQL" in lines[0]


def test_unmigrated_and_newer_schemas_are_refused(
    tmp_path, pg_dsn: str, sink: ScriptedPeer
) -> None:
    server = PetrelServer(tmp_path, node_config(pg_dsn, "n", sink.port))
    server.write_config()

    def serve() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "petrel", "serve", "--config", str(server.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    result = serve()
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "run 'petrel db migrate'" in result.stderr
    first = server.petrel_cli("db", "migrate")
    assert first.returncode == 0, first.stderr
    assert "migrated from version 0 to 3" in first.stdout
    again = server.petrel_cli("db", "migrate")
    assert again.returncode == 0 and "at version 3; nothing to do" in again.stdout
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE petrel_schema SET version = 99")
    newer = server.petrel_cli("db", "migrate")
    assert newer.returncode == 1
    assert "newer than this Petrel knows" in newer.stderr
    result = serve()
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "upgrade Petrel" in result.stderr


def test_migration_from_the_previous_schema_keeps_queued_mail(
    petrel_factory: Callable[..., PetrelServer], pg_dsn: str, sink: ScriptedPeer
) -> None:
    assert migrate(pg_dsn, target=1) == (0, 1)
    envelope = (
        '{"queue_id":"1K1JRJNFVA1MQ5","sender":"alice@mx.petrel.test",'
        '"received_at":1700000000.0,"recipients":[{"address":"old@sink.test"}]}'
    )
    body = b"Subject: v1\r\nMessage-ID: <v1@client.test>\r\n\r\nqueued by schema 1\r\n"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO petrel_message (queue_id, envelope, received_at, body_size, body_crc,"
            " next_attempt) VALUES ('1K1JRJNFVA1MQ5', %s, 1700000000, %s, %s, 0)",
            (envelope, len(body), zlib.crc32(body)),
        )
        conn.execute(
            "INSERT INTO petrel_recipient VALUES ('1K1JRJNFVA1MQ5', 0, 'old@sink.test',"
            " 'pending', 0, '{\"address\":\"old@sink.test\"}')"
        )
        conn.execute("INSERT INTO petrel_chunk VALUES ('1K1JRJNFVA1MQ5', 0, %s)", (body,))
    assert migrate(pg_dsn, target=2) == (1, 2)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a user of schema 2 stays
        conn.execute("INSERT INTO petrel_user VALUES ('old@example.test', 'x', '')")
    assert migrate(pg_dsn) == (2, 3)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT address FROM petrel_user").fetchall() == [
            ("old@example.test",)
        ]
    petrel_factory(node_config(pg_dsn, "node-a", sink.port), name="node-a")
    wait_until(lambda: delivered_ids(sink), 30, "the message queued under schema 1")
    assert delivered_ids(sink) == Counter({"v1@client.test": 1})


def test_database_stopped_during_data_gets_451_and_the_node_recovers(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer, pg_server: PgServer
) -> None:
    a = cluster("node-a")
    send(a, "before")  # acknowledged before the outage: must arrive
    with smtplib.SMTP(a.host, a.port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail(f"alice@{HOSTNAME}")
        client.rcpt("bob@sink.test")
        pg_server.stop()
        try:
            lost = b"Subject: lost\r\nMessage-ID: <lost@client.test>\r\n\r\nx\r\n"
            code, text = client.data(lost)
        finally:
            pg_server.start()
    assert (code, text[:5]) == (451, b"4.3.0"), text

    def accepted() -> bool:
        try:
            send(a, "after")
        except smtplib.SMTPException:
            return False
        return True

    wait_until(accepted, 60, "the node to accept mail again")
    wait_until(lambda: len(delivered_ids(sink)) >= 2, 60, "delivery to resume")
    ids = delivered_ids(sink)
    assert ids["before@client.test"] == 1 and ids["after@client.test"] >= 1
    assert "lost@client.test" not in ids


def test_database_stopped_mid_load_loses_nothing_acknowledged(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer, pg_server: PgServer
) -> None:
    nodes = [cluster("node-a"), cluster("node-b")]
    accepted: list[str] = []
    refused: list[int] = []
    stop = threading.Event()

    def sender(number: int) -> None:
        for i in range(400):  # bounded; stopped much sooner
            if stop.is_set():
                return
            tag = f"s{number}-{i}"
            try:
                send(nodes[i % 2], tag)
            except smtplib.SMTPDataError as exc:
                refused.append(exc.smtp_code)
                continue
            accepted.append(tag)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(accepted) >= 10, 60, "mail flowing")
        pg_server.stop()
        try:
            wait_until(lambda: len(refused) >= 3, 60, "clients refused during the outage")
        finally:
            pg_server.start()
        resumed = len(accepted)
        wait_until(lambda: len(accepted) >= resumed + 10, 60, "mail accepted again")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert set(refused) == {451}  # 4.3.0, try again later: never a 5xx, never a 250
    wanted = {f"{tag}@client.test" for tag in accepted}
    wait_until(lambda: wanted <= set(delivered_ids(sink)), 90, "every acknowledged message")


def test_sendmail_on_a_node_queues_into_the_shared_queue(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer
) -> None:
    a = cluster("node-a")
    message = "Subject: local\nMessage-ID: <sendmail@client.test>\n\nfrom sendmail\n"
    result = a.petrel_cli("sendmail", "-f", f"alice@{HOSTNAME}", "bob@sink.test", stdin=message)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: delivered_ids(sink), 30, "the sendmail message at the sink")
    assert delivered_ids(sink) == Counter({"sendmail@client.test": 1})
    assert not (a.data_dir / "queue" / "active").exists()  # no node-local spool was used


def test_a_user_added_on_one_node_logs_in_on_the_other(
    cluster: Callable[..., PetrelServer],
) -> None:
    shared_users = '\n[users]\nbackend = "postgresql"\n\n[auth]\nallow_plaintext_auth = true\n'
    a, b = cluster("node-a", shared_users), cluster("node-b", shared_users)
    address, password = f"dave@{HOSTNAME}", "correct horse battery"

    def login(node: PetrelServer) -> bool:
        with smtplib.SMTP(node.host, node.port, timeout=30) as client:
            client.ehlo("client.test")
            try:
                client.login(address, password)
            except smtplib.SMTPAuthenticationError:
                return False
            return True

    def refuses_strangers(node: PetrelServer) -> bool:
        """A local domain with a user accepts only its users (without any: everyone)."""
        with smtplib.SMTP(node.host, node.port, timeout=30) as client:
            client.ehlo("client.test")
            client.mail("x@client.test")
            return client.rcpt(f"nobody@{HOSTNAME}")[0] == 550

    assert not login(b) and not refuses_strangers(b)
    a.add_user(address, password)
    wait_until(lambda: refuses_strangers(b), 20, "node B to see the user added on node A")
    assert login(b)
    listed = b.petrel_cli("user", "list")
    assert listed.returncode == 0 and listed.stdout.split() == [address], listed
    assert not (b.data_dir / "users").exists()  # nothing went to a node-local file


def test_two_nodes_behind_a_real_haproxy_see_the_real_clients(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer, tmp_path: Path
) -> None:
    binary = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if binary is None:
        pytest.skip("haproxy is not installed (make system-deps)")
    listener = '\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "smtp"\nproxy_protocol = true\n'
    nodes = [cluster("node-a", listener), cluster("node-b", listener)]
    port = free_port()
    servers = "\n".join(
        f"    server {n} 127.0.0.1:{proxy_port(node)} send-proxy-v2"
        for n, node in zip(("a", "b"), nodes, strict=True)
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 64\n    nbthread 1\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n"
        f"frontend smtp\n    bind 127.0.0.1:{port}\n    default_backend petrel\n"
        f"backend petrel\n    balance roundrobin\n{servers}\n"
    )
    log = (tmp_path / "haproxy.log").open("wb")
    process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=log, stderr=log)
    log.close()
    try:

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, what="haproxy to listen")
        sources = []
        for i in range(4):  # round robin: connections to both nodes
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                sources.append(client.sock.getsockname()[1])
                client.ehlo("behind.example")
                client.sendmail(
                    f"alice@{HOSTNAME}",
                    ["bob@sink.test"],
                    f"Subject: lb{i}\r\nMessage-ID: <lb{i}@client.test>\r\n\r\nx\r\n".encode(),
                )
    finally:
        process.terminate()
        process.wait(timeout=10)
    wait_until(lambda: len(delivered_ids(sink)) >= 4, 60, "every message delivered")
    assert delivered_ids(sink) == Counter({f"lb{i}@client.test": 1 for i in range(4)})
    for message in sink.messages:
        assert b"Received: from behind.example (unknown [127.0.0.1])" in message.data
    # the nodes logged the clients' own ports, not HAProxy's connections to them
    seen = [
        [p for p in sources if f"client=127.0.0.1:{p} proxy=127.0.0.1:" in node.log_text()]
        for node in nodes
    ]
    assert all(seen) and sorted(seen[0] + seen[1]) == sorted(sources), seen


def test_hold_release_and_delete_from_any_node(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer
) -> None:
    sink.script.policy = {Rcpt: lambda event: reply(451, "4.7.1", "not now")}
    a = cluster("node-a", backoff="1h")
    b = cluster("node-b", backoff="1h")
    send(a, "h1", rcpt="carol@later.test")
    send(a, "h2", rcpt="carol@later.test")
    wait_until(
        lambda: (a.log_text() + b.log_text()).count("event=deferred") >= 2, 60, "both deferred"
    )
    first, second = re.findall(r"^([0-9A-Z]{14})", queue_list(b), re.MULTILINE)  # by arrival
    sink.script.policy = {}
    held = b.petrel_cli("queue", "hold", first)
    assert held.returncode == 0 and "placed on hold" in held.stdout, held
    assert f"{first}!" in queue_list(a)  # node A sees node B's hold
    assert a.petrel_cli("queue", "flush").stdout.startswith("petrel: 1 message")
    wait_until(lambda: delivered_ids(sink), 30, "the unheld message")
    assert delivered_ids(sink) == Counter({"h2@client.test": 1})
    released = a.petrel_cli("queue", "release", first)
    assert released.returncode == 0 and "released from hold" in released.stdout, released
    deleted = b.petrel_cli("queue", "delete", first)
    assert deleted.returncode == 0 and f"{first}: removed" in deleted.stdout, deleted
    assert "Mail queue is empty" in queue_list(a)
    unknown = a.petrel_cli("queue", "show", second)
    assert unknown.returncode == 1 and "no such message" in unknown.stderr


SHARED_ALIASES = '\n[users]\nbackend = "postgresql"\n\n[policy]\nexpn = "on"\n'


def expn(node: PetrelServer, name: str) -> tuple[int, str]:
    with smtplib.SMTP(node.host, node.port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.expn(name)
        return code, text.decode().replace("2.1.5 ", "")  # the members alone


def rcpt(node: PetrelServer, address: str) -> tuple[int, str]:
    with smtplib.SMTP(node.host, node.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("x@client.test")
        code, text = client.rcpt(address)
        return code, text.decode()


def test_an_alias_added_on_one_node_is_delivered_through_the_other(
    cluster: Callable[..., PetrelServer], sink: ScriptedPeer
) -> None:
    a, b = cluster("node-a", SHARED_ALIASES), cluster("node-b", SHARED_ALIASES)
    a.add_user(f"alice@{HOSTNAME}", "correct horse battery")  # unknown names get 550
    wait_until(lambda: rcpt(b, f"team@{HOSTNAME}")[0] == 550, 20, "node B to see the user")
    added = a.petrel_cli("alias", "add", "Team", "bob@sink.test", "carol@sink.test, alice")
    assert added.returncode == 0, added.stderr
    assert added.stdout == "petrel: alias team added\n"
    members = f"<bob@sink.test>\n<carol@sink.test>\n<alice@{HOSTNAME}>"
    wait_until(lambda: expn(b, "team") == (250, members), 20, "node B to expand the alias")

    send(b, "team", rcpt=f"team@{HOSTNAME}")
    wait_until(lambda: delivered_ids(sink), 30, "the alias's mail at the sink")
    assert delivered_ids(sink) == Counter({"team@client.test": 1})
    assert {r for m in sink.messages for r, _ in m.recipients} == {
        "bob@sink.test",
        "carol@sink.test",
    }
    # The bare target took the alias's domain: alice's Maildir on the delivering node.
    wait_until(lambda: a.messages("alice") + b.messages("alice"), 30, "alice's copy")
    assert len(a.messages("alice") + b.messages("alice")) == 1
    listed = b.petrel_cli("alias", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "team: bob@sink.test, carol@sink.test, alice\n"
    assert not (b.data_dir / "aliases").exists()  # nothing went to a node-local file

    deleted = b.petrel_cli("alias", "del", "TEAM")
    assert deleted.returncode == 0 and deleted.stdout == "petrel: alias team deleted\n"
    wait_until(lambda: rcpt(a, f"team@{HOSTNAME}")[0] == 550, 20, "node A to drop the alias")
    again = a.petrel_cli("alias", "del", "team")
    assert again.returncode == 1
    assert again.stderr == "petrel: alias 'team': no such alias\n"
    assert b.petrel_cli("alias", "list").stdout == ""


def test_alias_import_and_bad_targets_on_the_shared_table(
    cluster: Callable[..., PetrelServer], tmp_path: Path
) -> None:
    (tmp_path / "node-a" / "data").mkdir(parents=True)
    (tmp_path / "node-a" / "data" / "aliases").write_text("old: alice\n")
    a = cluster("node-a", SHARED_ALIASES)
    assert "event=aliases-file-ignored" in a.log_path.read_text()  # not read: import it
    for name, target in (
        ("backup", "|/usr/bin/backup"),
        ("box", "/var/mail/box"),
        ("list", ":include:/etc/list"),
        ("bad name", "alice"),
    ):
        refused = a.petrel_cli("alias", "add", name, "alice", target)
        assert refused.returncode == 1, refused
        assert len(refused.stderr.splitlines()) == 1 and "Traceback" not in refused.stderr
    exists = a.petrel_cli("alias", "add", "postmaster", "ops@sink.test")
    assert exists.returncode == 0, exists.stderr
    clash = a.petrel_cli("alias", "add", "postmaster", "other@sink.test")
    assert clash.returncode == 1 and "exists" in clash.stderr
    elsewhere = a.petrel_cli("alias", "add", "info@elsewhere.test", "ops@sink.test")
    assert elsewhere.returncode == 0  # added, with a warning: it is never looked up
    assert elsewhere.stderr.startswith("petrel: warning: elsewhere.test is not a local domain")

    broken = tmp_path / "broken-aliases"
    broken.write_text("sales: one@sink.test\nbackup: |/usr/bin/backup\n")
    result = a.petrel_cli("alias", "import", str(broken))
    assert result.returncode == 1
    assert result.stderr.startswith(f"petrel: {broken}:2: ")
    assert len(result.stderr.splitlines()) == 1 and "not supported" in result.stderr

    good = tmp_path / "aliases"
    good.write_text(
        "# moved from the old MX\n"
        "sales: one@sink.test,\n"
        "   two@sink.test\n"
        f"sales@{HOSTNAME}: three@sink.test\n"
        "loop1: loop2\n"
        "loop2: loop1\n"
    )
    result = a.petrel_cli("alias", "import", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"petrel: 4 aliases imported from {good}\n"
    wait_until(
        lambda: expn(a, "sales") == (250, "<three@sink.test>"), 20, "the imported aliases"
    )  # the local@domain key wins over the bare one, as in the file
    code, text = rcpt(a, f"loop1@{HOSTNAME}")
    assert code == 550 and text.startswith("5.4.6 "), text

    clash = a.petrel_cli("alias", "import", str(good))
    assert clash.returncode == 1
    assert "already in the table: loop1, loop2, sales, sales@" in clash.stderr
    good.write_text("sales: four@sink.test\n")
    replaced = a.petrel_cli("alias", "import", "--replace", str(good))
    assert replaced.returncode == 0, replaced.stderr
    assert a.petrel_cli("alias", "list").stdout == "sales: four@sink.test\n"
    wait_until(lambda: expn(a, "sales") == (250, "<four@sink.test>"), 20, "the replaced table")


def test_shared_users_on_a_schema_without_the_alias_table_ask_for_a_migration(
    tmp_path: Path, pg_dsn: str, sink: ScriptedPeer
) -> None:
    migrate(pg_dsn, target=2)
    server = PetrelServer(tmp_path, node_config(pg_dsn, "n", sink.port, SHARED_ALIASES))
    server.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "serve", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "petrel_alias" in result.stderr and "run 'petrel db migrate'" in result.stderr
    listed = server.petrel_cli("alias", "list")
    assert listed.returncode == 1 and "run 'petrel db migrate'" in listed.stderr
    assert server.petrel_cli("db", "migrate").returncode == 0
    assert server.petrel_cli("alias", "list").returncode == 0
