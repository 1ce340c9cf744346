"""Postfix as a real peer, both ways, plus ``petrel send`` against it.

The Postfix instance is the bench's private one (bench/targets.py): its own config,
queue and data directories under the test's temp dir, smtpd on 127.0.0.1, never the
system's. `make test` installs the package preseeded to "No configuration".
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from targets import DOMAIN, RECIPIENT, PostfixTarget

pytestmark = pytest.mark.skipif(
    shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs the postfix package and root (make test installs it; CI runs as root)",
)


class RelayingPostfix(PostfixTarget):
    """The private Postfix, sending everything that is not its own to Petrel."""

    def __init__(self, root: Path, relay_port: int) -> None:
        super().__init__(root)
        self.relay_port = relay_port

    def main_cf(self) -> str:
        return (
            super()
            .main_cf()
            .replace("relayhost =\n", f"relayhost = [127.0.0.1]:{self.relay_port}\n")
        )


def _postfix_messages(postfix: PostfixTarget) -> list[bytes]:
    new = postfix.maildir / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


@pytest.fixture
def postfix_root() -> Iterator[Path]:
    """Postfix's users must traverse to its folders: pytest's tmp_path is root-only (0700)."""
    root = Path(tempfile.mkdtemp(prefix="petrel-postfix-"))
    root.chmod(0o755)
    yield root / "postfix"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postfix(postfix_root: Path) -> Iterator[PostfixTarget]:
    target = PostfixTarget(postfix_root)
    target.start()
    yield target
    target.stop()


def test_petrel_relays_to_postfix(postfix: PostfixTarget, petrel_factory: Callable) -> None:
    petrel: PetrelServer = petrel_factory(
        '[domains]\nrelay_networks = ["127.0.0.1/32"]\n'
        f'[delivery]\ndns = false\nhosts = {{ "{DOMAIN}" = ["127.0.0.1:{postfix.port}"] }}\n'
    )
    with smtplib.SMTP(petrel.host, petrel.port) as client:
        client.sendmail(
            "app@relay.test",
            [RECIPIENT],
            b"Subject: via Petrel to Postfix\r\n\r\nhello postfix\r\n",
        )
    [message] = wait_until(lambda: _postfix_messages(postfix), what="Postfix's Maildir")
    assert b"Subject: via Petrel to Postfix" in message
    assert b"by mx.petrel.test (Petrel) with ESMTP id" in message  # our trace, kept
    assert b"(Postfix)" in message  # and Postfix's own Received above it
    petrel.wait_queue_empty()
    assert "event=delivered" in petrel.log_text()


def test_postfix_relays_to_petrel(postfix_root: Path, petrel: PetrelServer) -> None:
    postfix = RelayingPostfix(postfix_root, petrel.port)
    postfix.start()
    try:
        with smtplib.SMTP("127.0.0.1", postfix.port) as client:
            client.sendmail(
                "someone@bench.test",
                [f"willie@{HOSTNAME}"],
                b"Subject: via Postfix to Petrel\r\n\r\nhello petrel\r\n",
            )
        [message] = petrel.wait_for_messages("willie", timeout=60)
    finally:
        postfix.stop()
    assert b"Subject: via Postfix to Petrel" in message
    assert message.startswith(b"Return-Path: <someone@bench.test>\n")
    received = [line for line in message.split(b"\n") if line.startswith(b"Received:")]
    assert len(received) >= 2  # Petrel's, then Postfix's
    assert b"(Petrel) with ESMTP id" in message


def test_petrel_send_against_postfix(postfix: PostfixTarget) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "petrel", "send",
            "--server", f"127.0.0.1:{postfix.port}",
            "--from", "tester@petrel.test", "--to", RECIPIENT,
            "--subject", "petrel send to Postfix", "--body", "typed by petrel send",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("S: 220 mx.bench.test ESMTP Postfix") for line in lines)
    assert any(line.startswith("S: 250 2.0.0 Ok: queued as ") for line in lines)
    [message] = wait_until(lambda: _postfix_messages(postfix), what="Postfix's Maildir")
    assert b"typed by petrel send" in message
