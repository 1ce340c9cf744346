"""DKIM signing end to end: `petrel dkim keygen|check`, and `[[dkim.sign]]` at intake.

Petrel signs with dkimpy; the signatures are checked by verifiers Petrel does not use:
Debian's Mail::DKIM (RSA; its version in Debian 12 has no Ed25519) and mailauth
(postalsys, Node.js; RSA and Ed25519), both asking the Knot server of the test for the
keys `petrel dkim keygen` made. `make test` installs them (tests/dkim_verify/).
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until
from dns_server import DnsServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from targets import RECIPIENT, PostfixTarget

VERIFY = Path(__file__).resolve().parent / "dkim_verify"
USER, PASSWORD = "alice@example.test", "correct horse battery"  # may send as itself
LOCAL = f"bob@{HOSTNAME}"
SIGNING = """
[[dkim.sign]]
domain = "example.test"
selector = "s2026"
[[dkim.sign]]
domain = "example.test"
selector = "e2026"
key = "dkim/example.test.e2026.key"
"""

needs_verifiers = pytest.mark.skipif(
    shutil.which("node") is None or not (VERIFY / "node_modules" / "mailauth").is_dir(),
    reason="needs node and tests/dkim_verify/node_modules (make test installs them)",
)


def _keygen(server: PetrelServer, *args: str) -> subprocess.CompletedProcess[str]:
    return server.petrel_cli("dkim", "keygen", *args)


def _publish(dns_server: DnsServer, *lines: str, extra: tuple[str, ...] = ()) -> None:
    """Serve keygen's record lines ("s._domainkey.d. IN TXT "…" "…"") in zone d."""
    records = list(extra)
    for line in lines:
        name, _, _, data = line.split(" ", 3)
        records.append(f"{name} TXT {data}")
    dns_server.zone("example.test", records)


def _verify(message: bytes, dns_server: DnsServer) -> dict[str, set[str]]:
    """{verifier: {"pass s=s2026 a=rsa-sha256", ...}} for the message as stored."""
    text = re.sub(rb"\r?\n", b"\r\n", message)
    found: dict[str, set[str]] = {}
    for name, command in (
        ("perl", ["perl", str(VERIFY / "verify.pl"), dns_server.address]),
        ("node", ["node", str(VERIFY / "verify.js"), dns_server.address]),
    ):
        run = subprocess.run(command, input=text, capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr.decode()
        found[name] = {
            f"{r} {s} {a}"
            for r, _d, s, a in (line.split() for line in run.stdout.decode().splitlines())
        }
    return found


BOTH_PASS = {
    "perl": {"pass s=s2026 a=rsa-sha256", "invalid s=e2026 a=ed25519-sha256"},
    "node": {"pass s=s2026 a=rsa-sha256", "pass s=e2026 a=ed25519-sha256"},
}


@pytest.fixture
def signing(tmp_path: Path, dns_server: DnsServer) -> Iterator[PetrelServer]:
    """A server with an RSA and an Ed25519 key for example.test, both published."""
    server = PetrelServer(
        tmp_path / "petrel",
        f'[dns]\nnameservers = ["{dns_server.address}"]\n'
        '[domains]\nrelay_networks = ["127.0.0.1/32"]\n'
        "[auth]\nallow_plaintext_auth = true\n" + SIGNING,
    )
    server.root.mkdir()
    server.write_config()
    rsa = _keygen(server, "example.test", "--selector", "s2026")
    ed = _keygen(server, "example.test", "--algorithm", "ed25519", "--selector", "e2026")
    assert rsa.returncode == ed.returncode == 0, rsa.stderr + ed.stderr
    _publish(dns_server, rsa.stdout.strip(), ed.stdout.strip())
    server.add_user(USER, PASSWORD)
    server.start()
    yield server
    if server.process is not None:
        server.kill()


def _send(
    server: PetrelServer, sender: str, *, source: str = "127.0.0.1", login: bool = False
) -> None:
    with smtplib.SMTP(server.host, server.port, source_address=(source, 0)) as client:
        if login:
            client.login(USER, PASSWORD)
        client.sendmail(
            sender,
            [LOCAL],
            f"From: Sender <{sender}>\r\nTo: <{LOCAL}>\r\nSubject: dkim from {sender}\r\n"
            f"\r\nHello,  with  spaces  \r\nand a line.\r\n\r\n\r\n".encode(),
        )


def _by_subject(server: PetrelServer, count: int) -> dict[str, bytes]:
    messages = server.wait_for_messages("bob", count)
    return {
        re.search(rb"Subject: dkim from (\S+)", m)[1].decode(): m  # type: ignore[index]
        for m in messages
    }


@needs_verifiers
def test_submitted_relayed_and_sendmail_mail_is_signed_with_both_keys(
    signing: PetrelServer, dns_server: DnsServer
) -> None:
    """An authenticated user, a relay_networks client (a subdomain's From:) and
    `petrel sendmail` get an RSA and an Ed25519 signature that independent verifiers
    accept; From: outside the signing domain, and unauthenticated mail from elsewhere
    (127.0.0.2 is outside relay_networks) are not signed."""
    _send(signing, "alice@example.test", source="127.0.0.2", login=True)
    _send(signing, "news@lists.example.test")
    _send(signing, "someone@other.test")
    _send(signing, "forged@example.test", source="127.0.0.2")
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "sendmail", "--config", str(signing.config_path), "-t"],
        input=f"From: cron@example.test\nTo: {LOCAL}\nSubject: dkim from sendmail\n\nhi\n".encode(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    messages = _by_subject(signing, 5)
    for signed in ("alice@example.test", "news@lists.example.test", "sendmail"):
        message = messages[signed]
        assert message.count(b"DKIM-Signature:") == 2, signed
        assert b"c=relaxed/relaxed; d=example.test;" in message
        assert re.search(rb"h=[^;]*\bfrom\b[^;]*: from;", message), "From is signed twice"
        assert _verify(message, dns_server) == BOTH_PASS, signed
    assert b"DKIM-Signature:" not in messages["someone@other.test"]
    assert b"DKIM-Signature:" not in messages["forged@example.test"]


@needs_verifiers
def test_a_message_changed_after_signing_fails_verification(
    signing: PetrelServer, dns_server: DnsServer
) -> None:
    """The verifiers really check: the body changed by one word fails both signatures."""
    _send(signing, "alice@example.test", login=True)
    [message] = signing.wait_for_messages("bob")
    tampered = message.replace(b"and a line.", b"and a lie.")
    results = _verify(tampered, dns_server)
    assert results["perl"] == {"fail s=s2026 a=rsa-sha256", "invalid s=e2026 a=ed25519-sha256"}
    # mailauth calls a body that no longer matches its hash "neutral" (RFC 6376 §6.3)
    assert results["node"] == {"neutral s=s2026 a=rsa-sha256", "neutral s=e2026 a=ed25519-sha256"}


# -- relayed through a real Postfix ------------------------------------------------------


@needs_verifiers
@pytest.mark.skipif(
    shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs the postfix package and root (make test installs it; CI runs as root)",
)
def test_signatures_survive_relay_through_postfix(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    """Petrel signs, relays to Postfix, Postfix delivers into its Maildir: both
    signatures still verify there (Postfix adds its own Received and Return-Path)."""
    root = Path(tempfile.mkdtemp(prefix="petrel-postfix-"))
    root.chmod(0o755)  # Postfix's users must traverse to its folders
    postfix = PostfixTarget(root / "postfix")
    postfix.start()
    server = PetrelServer(
        tmp_path / "petrel",
        f'[dns]\nnameservers = ["{dns_server.address}"]\n'
        '[domains]\nrelay_networks = ["127.0.0.1/32"]\n'
        f'[delivery]\ndns = false\nhosts = {{ "bench.test" = ["127.0.0.1:{postfix.port}"] }}\n'
        + SIGNING,
    )
    try:
        server.root.mkdir()
        server.write_config()
        rsa = _keygen(server, "example.test", "--selector", "s2026")
        ed = _keygen(server, "example.test", "--algorithm", "ed25519", "--selector", "e2026")
        _publish(dns_server, rsa.stdout.strip(), ed.stdout.strip())
        server.start()
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail(
                "app@example.test",
                [RECIPIENT],
                f"From: app@example.test\r\nTo: {RECIPIENT}\r\nSubject: via Postfix\r\n"
                "\r\nsigned before the relay\r\n".encode(),
            )
        new = postfix.maildir / "new"
        [path] = wait_until(lambda: list(new.iterdir()) if new.is_dir() else [], 60, "Postfix")
        message = path.read_bytes()
    finally:
        if server.process is not None:
            server.kill()
        postfix.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert b"(Postfix)" in message and message.count(b"DKIM-Signature:") == 2
    assert _verify(message, dns_server) == BOTH_PASS


# -- keygen and check --------------------------------------------------------------------


@pytest.fixture
def cli_server(tmp_path: Path, dns_server: DnsServer) -> PetrelServer:
    """A configuration for the CLI (no server runs), its [dns] at the test's Knot."""
    server = PetrelServer(tmp_path, f'[dns]\nnameservers = ["{dns_server.address}"]\n')
    server.write_config()
    return server


def test_keygen_writes_a_private_key_and_prints_the_record(cli_server: PetrelServer) -> None:
    made = _keygen(cli_server, "Example.TEST", "--selector", "s2026")
    assert made.returncode == 0, made.stderr
    key = cli_server.data_dir / "dkim" / "example.test.s2026.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (key.parent.stat().st_mode & 0o077) == 0
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert re.fullmatch(
        r's2026\._domainkey\.example\.test\. IN TXT "v=DKIM1; k=rsa; p=MIIBIjAN[^"]+"'
        r'( "[^"]+")*\n',
        made.stdout,
    )
    assert len(made.stdout) > 400  # 2048 bits
    again = _keygen(cli_server, "example.test", "--selector", "s2026")
    assert again.returncode == 1 and again.stdout == ""
    assert "exists: not overwritten" in again.stderr
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    ed = _keygen(cli_server, "example.test", "--algorithm", "ed25519")
    assert ed.returncode == 0
    assert re.fullmatch(
        r'e\d{4}\._domainkey\.example\.test\. IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="\n',
        ed.stdout,
    )
    bad = _keygen(cli_server, "../etc", "--selector", "s1")
    assert bad.returncode == 2 and "not a valid domain name" in bad.stderr


def test_check_says_whether_dns_publishes_the_key(
    cli_server: PetrelServer, dns_server: DnsServer
) -> None:
    made = _keygen(cli_server, "example.test", "--selector", "s2026").stdout.strip()
    other = _keygen(cli_server, "example.test", "--selector", "old").stdout.strip()

    def check() -> subprocess.CompletedProcess[str]:
        return cli_server.petrel_cli("dkim", "check", "example.test", "--selector", "s2026")

    dns_server.zone("example.test", ["@ MX 10 mx"])
    missing = check()
    assert missing.returncode == 1
    assert "s2026._domainkey.example.test: no TXT record published; publish:" in missing.stdout
    assert made in missing.stdout

    _publish(dns_server, made)
    matching = check()
    assert matching.returncode == 0, matching.stdout + matching.stderr
    assert "s2026._domainkey.example.test: OK, the published key matches" in matching.stdout

    wrong = other.replace("old._domainkey", "s2026._domainkey")  # another key's p=
    _publish(dns_server, wrong)
    mismatch = check()
    assert mismatch.returncode == 1
    assert "the published record does not match" in mismatch.stdout and made in mismatch.stdout

    nokey = cli_server.petrel_cli("dkim", "check", "example.test", "--selector", "nokey")
    assert nokey.returncode == 1 and "cannot read" in nokey.stderr


def test_check_of_configured_entries_and_a_dns_timeout(
    tmp_path: Path, dns_server: DnsServer, silent_nameserver: str
) -> None:
    server = PetrelServer(
        tmp_path, f'[dns]\nnameservers = ["{silent_nameserver}"]\ntimeout = "0.5s"\n' + SIGNING
    )
    server.write_config()
    _keygen(server, "example.test", "--selector", "s2026")
    _keygen(server, "example.test", "--selector", "e2026", "--algorithm", "ed25519")
    timed_out = server.petrel_cli("dkim", "check", "example.test")  # both configured keys
    assert timed_out.returncode == 1
    assert timed_out.stdout.count("lookup failed, try again later: timed out") == 2


# -- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_text", "error"),
    [
        (None, "dkim.sign[1].key: {path}: cannot read: No such file or directory"),
        (
            b"not a key\n",
            "dkim.sign[1].key: {path}: not a PEM private key (make one with `petrel dkim keygen`)",
        ),
    ],
)
def test_an_unusable_key_is_one_line_naming_it(
    tmp_path: Path, key_text: bytes | None, error: str
) -> None:
    server = PetrelServer(tmp_path, SIGNING)
    server.write_config()
    assert _keygen(server, "example.test", "--selector", "s2026").returncode == 0
    path = server.data_dir / "dkim" / "example.test.e2026.key"
    if key_text is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, key_text)
        os.close(fd)
    for command in ("check-config", "serve"):
        result = server.petrel_cli(command)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [f"petrel: {error.format(path=path)}"], command


def test_a_readable_key_for_others_and_bad_entries_are_refused(tmp_path: Path) -> None:
    server = PetrelServer(tmp_path, SIGNING)
    server.write_config()
    _keygen(server, "example.test", "--selector", "s2026")
    _keygen(server, "example.test", "--selector", "e2026", "--algorithm", "ed25519")
    key = server.data_dir / "dkim" / "example.test.s2026.key"
    key.chmod(0o644)
    result = server.petrel_cli("check-config")
    assert result.returncode == 2
    assert result.stderr == f"petrel: dkim.sign[0].key: {key}: others may read it: chmod 600 it\n"
    for entry, error in (
        ('domain = "example.test"\n', "dkim.sign[0].selector: required"),
        ('domain = "x"\nselector = "a b"\n', "dkim.sign[0].selector: not a valid selector"),
        ('domain = "x"\nselector = "s"\nalgo = "rsa"\n', "dkim.sign[0].algo: unknown key"),
    ):
        server.config_path.write_text(f"[[dkim.sign]]\n{entry}")
        result = server.petrel_cli("check-config")
        assert result.returncode == 2 and result.stderr.startswith(f"petrel: {error}"), entry


def test_reload_with_a_broken_key_is_refused(signing: PetrelServer) -> None:
    (signing.data_dir / "dkim" / "example.test.e2026.key").unlink()
    assert signing.petrel_cli("reload").returncode == 0
    wait_until(lambda: "event=reload-refused" in signing.log_text(), what="reload-refused")
    line = next(x for x in signing.log_text().splitlines() if "event=reload-refused" in x)
    assert "dkim.sign[1].key:" in line and "No such file or directory" in line
