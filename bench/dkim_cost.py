"""What DKIM signing costs: ``python bench/dkim_cost.py`` (``make bench-dkim``).

1. The signer alone (the work intake does in a thread at commit): CPU milliseconds per
   message for RSA-2048, Ed25519 and both, by message size.
2. The event loop while a thread signs: the longest a 1 ms timer on the loop is late
   (dkimpy's RSA is pure Python, so it holds the GIL while it runs).
3. End to end: a real ``petrel serve`` (one process) taking MESSAGES (default 300)
   messages of 3 KB from a relay_networks client over CLIENTS (default 4) connections
   into a local mailbox, without and with an RSA + Ed25519 `[[dkim.sign]]`.

Talks to 127.0.0.1 only; no DNS (signing needs none). Writes nothing outside a temp dir.
"""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import wait_until

from petrel.config import DkimSign
from petrel.dkim import Signer
from petrel.dkim.keys import generate, load

MESSAGES = int(os.environ.get("MESSAGES", "300"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
HEADER = (
    b"From: Alice <alice@example.test>\r\nTo: <bob@mx.bench.test>\r\n"
    b"Subject: a message to sign\r\nDate: Tue, 1 Dec 2026 17:00:00 +0000\r\n"
    b"Message-ID: <bench@example.test>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
)


def _message(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again.  \r\n"
    return HEADER + line * max(1, (size - len(HEADER)) // len(line))


def _keys(directory: Path) -> list:  # type: ignore[type-arg]
    keys = []
    for selector, algorithm in (("s1", "rsa"), ("e1", "ed25519")):
        path = directory / f"example.test.{selector}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, generate(algorithm))
        os.close(fd)
        keys.append(load(DkimSign("example.test", selector, path)))
    return keys


def signer_alone(keys: list) -> None:  # type: ignore[type-arg]
    print("1. Signer.sign, CPU ms per message (median of runs)")
    print(f"   {'size':>9} {'rsa':>8} {'ed25519':>8} {'both':>8}")
    for size in (3_000, 100_000, 1_000_000, 10_000_000):
        message = _message(size)
        runs = 30 if size <= 100_000 else 5
        row = []
        for chosen in ([keys[0]], [keys[1]], keys):
            Signer.sign(message, chosen)
            times = []
            for _ in range(runs):
                start = time.process_time()
                Signer.sign(message, chosen)
                times.append(time.process_time() - start)
            row.append(statistics.median(times) * 1000)
        print(f"   {size:>9} " + " ".join(f"{t:8.2f}" for t in row))


def loop_stall(keys: list) -> None:  # type: ignore[type-arg]
    """How late a 1 ms timer gets while signatures are made in the default executor."""

    async def measure(sign: bool) -> float:
        loop = asyncio.get_running_loop()
        worst = 0.0
        stop = threading.Event()

        async def sign_many() -> None:
            message = _message(3_000)
            for _ in range(50):
                await loop.run_in_executor(None, Signer.sign, message, keys)
            stop.set()

        task = asyncio.ensure_future(sign_many()) if sign else None
        deadline = time.monotonic() + 2.0
        while not stop.is_set() and time.monotonic() < deadline:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - start - 0.001)
        if task is not None:
            await task
        return worst * 1000

    idle, signing = asyncio.run(measure(False)), asyncio.run(measure(True))
    print("2. a 1 ms timer on the event loop, worst lateness")
    print(f"   idle {idle:.2f} ms; a thread signing 50 messages (RSA + Ed25519) {signing:.2f} ms")


def _serve(root: Path, signing: bool) -> tuple[subprocess.Popen[bytes], int, Path]:
    data = root / "data"
    (data / "dkim").mkdir(parents=True, mode=0o700)
    config = root / "petrel.toml"
    text = f"""
[server]
hostname = "mx.bench.test"
data_dir = "{data}"
reverse_dns = false
[[listener]]
address = "127.0.0.1:0"
mode = "smtp"
[domains]
relay_networks = ["127.0.0.1/32"]
[limits]
message_rate = 0
recipient_rate = 0
connection_rate = 0
[delivery]
dns = false
"""
    if signing:
        _keys(data / "dkim")
        for selector in ("s1", "e1"):
            text += (
                f'[[dkim.sign]]\ndomain = "example.test"\nselector = "{selector}"\n'
                f'key = "dkim/example.test.{selector}.key"\n'
            )
    config.write_text(text)
    log = root / "petrel.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "petrel", "serve", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    found = wait_until(
        lambda: (
            re.search(r"event=ready", log.read_text())
            and re.search(r"event=listening address=\S+:(\d+)", log.read_text())
        ),
        30,
        "petrel to listen",
    )
    return process, int(found[1]), data / "mailboxes" / "mx.bench.test" / "bob" / "new"


def end_to_end() -> None:
    print(f"3. petrel serve, {MESSAGES} messages of 3 KB over {CLIENTS} connections")
    message = _message(3_000)
    results = {}
    for signing in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            process, port, new = _serve(Path(tmp), signing)
            try:
                cpu0 = _cpu(process.pid)
                start = time.perf_counter()

                def client(count: int, port: int = port) -> None:
                    with smtplib.SMTP("127.0.0.1", port) as smtp:
                        for _ in range(count):
                            smtp.sendmail("alice@example.test", ["bob@mx.bench.test"], message)

                threads = [
                    threading.Thread(target=client, args=(MESSAGES // CLIENTS,))
                    for _ in range(CLIENTS)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                accepted = time.perf_counter() - start
                sent = MESSAGES // CLIENTS * CLIENTS
                wait_until(
                    lambda n=new, s=sent: n.is_dir() and len(os.listdir(n)) >= s, 120, "mail"
                )
                cpu = _cpu(process.pid) - cpu0
                sample = (new / sorted(os.listdir(new))[0]).read_bytes()
                assert sample.count(b"DKIM-Signature:") == (2 if signing else 0)
            finally:
                process.terminate()
                process.wait(30)
        results[signing] = (sent / accepted, cpu / sent * 1000)
        label = "with RSA + Ed25519 signing" if signing else "without signing"
        print(
            f"   {label:27} {sent / accepted:7.0f} msg/s accepted, "
            f"{cpu / sent * 1000:6.2f} ms server CPU per message"
        )
    extra = results[True][1] - results[False][1]
    print(f"   signing adds {extra:.2f} ms of server CPU per message")


def _cpu(pid: int) -> float:
    """User + system seconds of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = _keys(Path(tmp))
        signer_alone(keys)
        loop_stall(keys)
    end_to_end()


if __name__ == "__main__":
    main()
