"""kill -9 under load: does every message that got a 250 arrive exactly once?

``make crash`` (or ``python bench/crash.py``) runs a real ``petrel serve`` in a temporary
directory, sends mail from several SMTP clients at once and kills the server's whole
process group with SIGKILL at a random moment, again and again. After the last kill the
server is started once more and left to drain. Then every Maildir file is matched
against the messages the clients saw ``250`` for:

* lost: acknowledged, not in the mailbox (must be 0);
* duplicated: in the mailbox more than once (must be 0);
* recovery: messages found in the queue at each restart and how fast they drained.

``MAILBOX_FILES`` pre-fills the mailbox (old mail), as a busy mailbox has; the check a
recovered delivery makes must not grow with it. Talks to 127.0.0.1 only; every loop is
bounded in count and time. Environment: KILLS (default 8), SENDERS (8), WORKERS (2),
LOAD_SECONDS (random 1–3 s of load before each kill), MAILBOX_FILES (20000), SEED.

``python bench/crash.py recovery`` measures recovery alone: BACKLOG (default 20000)
committed messages left in the spool, as after a crash, for a mailbox of MAILBOX_FILES
(default 46730, the issue's figure); the server starts, every message is recovered and
checked against the mailbox before delivery, and the drain rate is printed.
"""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from common import BenchError, free_port, raise_nofile, wait_until

HOSTNAME = "crash.petrel.test"
_SUBJECT = re.compile(rb"^Subject: (c\d+-\d+-\d+)$", re.MULTILINE)


class Server:
    def __init__(self, root: Path, workers: int) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.log = root / "petrel.log"
        (root / "petrel.toml").write_text(
            f"""
[server]
hostname = "{HOSTNAME}"
data_dir = "{self.data_dir}"
reverse_dns = false
workers = {workers}

[[listener]]
address = "127.0.0.1:{self.port}"
mode = "smtp"

[delivery]
dns = false

[authentication]
checks = false  # SPF/DMARC would ask the system's resolver: no DNS may leave the machine

[queue]
min_backoff = "2s"
max_backoff = "4s"
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "petrel", "serve", "--config", f"{self.root}/petrel.toml"],
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: the kill takes the workers too
            )
        wait_until(
            lambda: "event=ready" in self.log.read_text(errors="replace")[offset:],
            60,
            "petrel to be ready",
        )

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.process = None

    def queued(self) -> int:
        active = self.data_dir / "queue" / "active"
        return len(os.listdir(active)) if active.is_dir() else 0

    def recovered(self) -> list[int]:
        text = self.log.read_text(errors="replace")
        return [int(n) for n in re.findall(r"event=ready .*recovered=(\d+)", text)]


def _sender(
    server: Server, number: int, round_: int, stop: threading.Event, acked: list[str]
) -> None:
    sent = 0
    while not stop.is_set() and sent < 100_000:
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                while not stop.is_set() and sent < 100_000:
                    subject = f"c{round_}-{number}-{sent}"
                    sent += 1
                    client.sendmail(
                        "load@client.test",
                        [f"victim@{HOSTNAME}"],
                        f"From: load@client.test\r\nSubject: {subject}\r\n\r\nkill me\r\n",
                    )
                    acked.append(subject)  # only after the 250
        except (OSError, smtplib.SMTPException):
            stop.wait(0.05)  # cut off by the kill, or not accepting yet: try again


def _prefill(maildir: Path, count: int) -> None:
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (maildir / "cur" / f"1700000000.M{i:06d}P1Q{i}.old:2,S").write_bytes(b"Subject: old\n\n")


def _backlog(data_dir: Path, count: int) -> None:
    """``count`` committed messages for the victim, written as the server would."""
    import asyncio

    from petrel.queue import Envelope, Recipient, Spool, new_queue_id

    async def fill() -> None:
        spool = Spool(data_dir / "queue")
        spool.open()
        try:
            for start in range(0, count, 1000):  # group commits of 1000

                async def one(i: int) -> None:
                    envelope = Envelope(
                        new_queue_id(), "load@client.test", [Recipient(f"victim@{HOSTNAME}")],
                        time.time(),
                    )  # fmt: skip
                    writer = spool.begin(envelope)
                    writer.write(f"Subject: c0-0-{i}\r\n\r\nrecover me\r\n".encode())
                    await spool.commit(writer)

                await asyncio.gather(*(one(i) for i in range(start, min(start + 1000, count))))
        finally:
            spool.close()

    asyncio.run(fill())


def recovery() -> int:
    raise_nofile()
    backlog = int(os.environ.get("BACKLOG", "20000"))
    prefill = int(os.environ.get("MAILBOX_FILES", "46730"))
    with tempfile.TemporaryDirectory(prefix="petrel-recovery-") as tmp:
        server = Server(Path(tmp), int(os.environ.get("WORKERS", "1")))
        maildir = server.data_dir / "mailboxes" / HOSTNAME / "victim"
        server.data_dir.mkdir(mode=0o700)
        _prefill(maildir, prefill)
        _backlog(server.data_dir, backlog)
        started = time.monotonic()
        server.start()
        ready = time.monotonic()
        wait_until(lambda: server.queued() == 0, 1800, "the backlog to drain", step=0.1)
        drained = time.monotonic()
        server.stop()
        delivered = len(os.listdir(maildir / "new"))
    print(f"mailbox pre-filled with {prefill} messages; backlog {backlog}, delivered {delivered}")
    print(f"start-up (recovery scan) {ready - started:.1f} s; drain {drained - ready:.1f} s")
    print(f"recovery rate: {backlog / (drained - started):.0f} msg/s overall")
    return 0 if delivered == backlog else 1


def main() -> int:
    raise_nofile()
    kills = int(os.environ.get("KILLS", "8"))
    senders = int(os.environ.get("SENDERS", "8"))
    workers = int(os.environ.get("WORKERS", "2"))
    prefill = int(os.environ.get("MAILBOX_FILES", "20000"))
    rng = random.Random(int(os.environ.get("SEED", str(time.time_ns()))))
    load = os.environ.get("LOAD_SECONDS")
    with tempfile.TemporaryDirectory(prefix="petrel-crash-") as tmp:
        server = Server(Path(tmp), workers)
        maildir = server.data_dir / "mailboxes" / HOSTNAME / "victim"
        _prefill(maildir, prefill)
        acked: list[str] = []
        restarts: list[tuple[int, int]] = []  # (recovered at the start, queued at the kill)
        for round_ in range(kills):
            server.start()
            stop = threading.Event()
            threads = [
                threading.Thread(target=_sender, args=(server, n, round_, stop, acked))
                for n in range(senders)
            ]
            for thread in threads:
                thread.start()
            time.sleep(float(load) if load else rng.uniform(1.0, 3.0))
            server.kill()  # mid-load: clients are cut off between any two bytes
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            restarts.append((server.recovered()[-1], server.queued()))
        backlog = server.queued()
        started = time.monotonic()
        server.start()
        wait_until(lambda: server.queued() == 0, 600, "the final backlog to drain", step=0.1)
        drained = time.monotonic() - started
        server.stop()
        found: Counter[str] = Counter()
        for sub in ("new", "cur"):
            for name in os.listdir(maildir / sub):
                match = _SUBJECT.search((maildir / sub / name).read_bytes())
                if match:
                    found[match[1].decode()] += 1
        lost = [s for s in acked if s not in found]
        duplicated = [s for s, n in found.items() if n > 1]
    print(f"kill -9 rounds: {kills}, workers: {workers}, senders: {senders}")
    print(f"mailbox pre-filled with {prefill} messages")
    print(f"acknowledged (250): {len(acked)}, delivered: {sum(found.values())}")
    print(f"lost: {len(lost)}, duplicated: {len(duplicated)}")
    steps = ", ".join(f"{r}/{q}" for r, q in restarts)
    print(f"per round, recovered at start / queued at the kill: {steps}")
    rate = backlog / drained if drained else 0.0
    print(f"final backlog: {backlog} messages, drained in {drained:.1f} s ({rate:.0f} msg/s)")
    return 1 if lost or duplicated else 0


if __name__ == "__main__":
    try:
        sys.exit(recovery() if sys.argv[1:] == ["recovery"] else main())
    except BenchError as exc:
        print(f"crash: {exc}", file=sys.stderr)
        sys.exit(2)
