"""Shared-queue throughput: 1, 2 and 3 Petrel nodes on one PostgreSQL against the spool.

    .venv/bin/python bench/pg_cluster.py [MESSAGES] [SESSIONS]

Runs a private PostgreSQL (the tests' `pg_server.PgServer`: initdb in a temp dir,
loopback, synchronous_commit on), measures `PgStore.commit` alone with 1, 20 and 100
concurrent writers (the group commit: messages/s and messages per transaction), then
for each setup starts the nodes, sends MESSAGES
1 KB messages over SESSIONS concurrent aiosmtplib sessions spread round-robin over the
nodes, and reports two rates: accepted (every 250 received: the message is committed)
and delivered (every message in a Maildir's new/; with several nodes the deliveries are
leased by whichever node is free, local Maildir being node-local). Same machine, same
run, spool first.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

from petrel.queue.envelope import Envelope, Recipient
from petrel.queue.ids import new_queue_id
from petrel.queue.pg import PgStore, migrate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_server import PgServer, _bin_dir  # the tests' private PostgreSQL

HOSTNAME = "mx.bench.test"
_LISTENING = re.compile(r"event=listening address=127\.0\.0\.1:(\d+) mode=smtp")
BODY = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12


def start_node(root: Path, queue: str) -> tuple[subprocess.Popen[bytes], int]:
    root.mkdir(parents=True)
    config = root / "petrel.toml"
    config.write_text(
        f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "{root / "data"}"\n'
        'reverse_dns = false\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "smtp"\n'
        f"[delivery]\ndns = false\n[authentication]\nchecks = false\n[queue]\n{queue}\n"
    )
    log = (root / "petrel.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "petrel", "serve", "--config", str(config)],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (root / "petrel.log").read_text()
        found = _LISTENING.search(text)
        if found and "event=ready" in text:
            return process, int(found[1])
        if process.poll() is not None:
            raise SystemExit(f"node failed to start:\n{text}")
        time.sleep(0.05)
    raise SystemExit("node did not start")


def delivered(roots: list[Path]) -> int:
    total = 0
    for root in roots:
        new = root / "data" / "mailboxes" / HOSTNAME / "bench" / "new"
        if new.is_dir():
            total += sum(1 for _ in new.iterdir())
    return total


async def send(ports: list[int], messages: int, sessions: int) -> None:
    counter = iter(range(messages))

    async def session(n: int) -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=ports[n % len(ports)], start_tls=False
        )
        await client.connect()
        for _ in counter:
            await client.sendmail("load@client.test", [f"bench@{HOSTNAME}"], BODY)
        await client.quit()

    await asyncio.gather(*(session(n) for n in range(sessions)))


def run(name: str, work: Path, queues: list[str], messages: int, sessions: int) -> str:
    roots = [work / f"{name}-{i}" for i in range(len(queues))]
    nodes = [start_node(root, queue) for root, queue in zip(roots, queues, strict=True)]
    try:
        started = time.monotonic()
        asyncio.run(send([port for _, port in nodes], messages, sessions))
        accepted = time.monotonic() - started
        while delivered(roots) < messages:
            if time.monotonic() - started > 600:
                raise SystemExit(f"{name}: only {delivered(roots)} of {messages} delivered")
            time.sleep(0.05)
        done = time.monotonic() - started
    finally:
        for process, _ in nodes:
            process.terminate()
            process.wait(30)
    return f"| {name} | {messages / accepted:.0f} | {messages / done:.0f} |"


def store_only(dsn: str, spill: Path, messages: int, writers: int) -> str:
    """`PgStore.commit` alone, ``writers`` at once (no SMTP, no delivery): the group commit."""
    store = PgStore(dsn, "bench", 600.0, spill)
    store.open()

    async def writer(count: int) -> None:
        for _ in range(count):
            envelope = Envelope(
                new_queue_id(), "load@client.test", [Recipient(f"bench@{HOSTNAME}")], time.time()
            )
            w = store.begin(envelope)
            w.write(BODY)
            await store.commit(w)

    async def all_writers() -> None:
        await asyncio.gather(*(writer(messages // writers) for _ in range(writers)))

    try:
        started = time.monotonic()
        asyncio.run(all_writers())
        elapsed = time.monotonic() - started
    finally:
        store.close()
    total = messages // writers * writers
    per_tx = total / max(store.sync_count, 1)
    return f"| {writers} | {total / elapsed:.0f} | {per_tx:.1f} |"


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (make system-deps)")
    work = Path(tempfile.mkdtemp(prefix="petrel-pgbench-"))
    pg = PgServer(bin_dir, Path(tempfile.mkdtemp(prefix="petrel-pg-")))
    pg.init()
    pg.start()
    rows = [f"{messages} messages of 1 KB, {sessions} SMTP sessions"]
    try:
        rows += ["", "PgStore.commit alone:", "", "| writers | msg/s | msgs per transaction |"]
        rows.append("|---|---|---|")
        dsn = pg.new_database()
        migrate(dsn)
        for writers in (1, 20, 100):
            rows.append(store_only(dsn, work / f"spill{writers}", messages, writers))
        rows += ["", "| setup | accepted msg/s | delivered msg/s |", "|---|---|---|"]
        rows.append(run("spool", work, ['backend = "spool"'], messages, sessions))
        for count in (1, 2, 3):
            dsn = pg.new_database()
            migrate(dsn)
            queues = [
                f'backend = "postgresql"\ndsn = "{dsn}"\nnode = "n{i}"' for i in range(count)
            ]
            rows.append(run(f"postgresql x{count}", work, queues, messages, sessions))
    finally:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
