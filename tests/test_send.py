"""``petrel send`` end to end: against a running Petrel (golden transcripts) and against a
scripted peer that refuses at each stage (every exit status), TLS and AUTH included."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer
from petrel.smtp import (
    AuthCredentials,
    AuthOutcome,
    Data,
    Ehlo,
    EndOfData,
    Extensions,
    Mail,
    Rcpt,
    Reply,
    StartTls,
    reply,
)
from smtp_driver import answer
from smtp_peer import PeerScript, ScriptedPeer

GOLDEN = Path(__file__).parent / "golden"
PASSWORD = "funsmtp"  # the seed's, and the one account smtp_driver's answers know
REFUSE = {
    "greeting": reply(554, None, "peer.test no service for you"),
    "ehlo": reply(550, "5.7.1", "go away"),
    "tls": reply(454, "4.7.0", "TLS not available due to temporary reason"),
    "auth": reply(535, "5.7.8", "Authentication credentials invalid"),
    "mail": reply(550, "5.7.1", "Sender refused"),
    "rcpt": reply(550, "5.1.1", "User unknown"),
    "data": reply(554, "5.5.1", "No DATA for you"),
    "message": reply(554, "5.7.1", "Message refused: spam"),
}
_STAGE_EVENTS = {
    "ehlo": (Ehlo,),
    "tls": (StartTls,),
    "auth": (AuthCredentials, AuthOutcome),
    "mail": (Mail,),
    "rcpt": (Rcpt,),
    "data": (Data,),
    "message": (EndOfData,),
}


def petrel_send(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "petrel", "send", "--timeout", "10", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )


def normalise(text: str, port: int) -> str:
    text = text.replace(f":{port}", ":PORT")
    # keywords a TLS/AUTH-enabled build may add do not change the conversation's shape
    text = re.sub(r"S: 250-(STARTTLS|AUTH .*)\n", "", text)
    text = re.sub(r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", "DATE", text)
    text = re.sub(r"Message-ID: <[^>]+>", "Message-ID: <ID>", text)
    return re.sub(r"\b[0-9A-Z]{14}\b", "QUEUEID", text)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (also its own CA for --ca)."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=peer.test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:peer.test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


class SendPeer:
    """smtp_peer's scripted peer set up for petrel send: refuse at one stage, log logins."""

    def __init__(
        self,
        certificate: tuple[str, str],
        refuse: str | None = None,
        starttls: bool = False,
        auth: tuple[str, ...] = (),
    ) -> None:
        self.credentials: list[tuple[str, str]] = []
        policy = {event: self._refuse(refuse) for event in _STAGE_EVENTS.get(refuse or "", ())}
        if refuse != "auth":
            policy[AuthCredentials] = self._login
        tls = None
        if starttls and refuse != "tls":
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(*certificate)
        script = PeerScript(
            extensions=Extensions(starttls=starttls, auth=auth),
            greeting=REFUSE["greeting"] if refuse == "greeting" else None,
            policy=policy,  # type: ignore[arg-type]
            tls=tls,
        )
        self.peer = ScriptedPeer(script).start()
        self.address = f"127.0.0.1:{self.peer.port}"

    @staticmethod
    def _refuse(stage: str | None) -> Callable[[object], Reply]:
        return lambda event: REFUSE[stage or ""]

    def _login(self, event: AuthCredentials) -> Reply:
        self.credentials.append((event.authcid, event.password))
        return answer(None, event)  # type: ignore[arg-type]  # 235 for willie/funsmtp

    @property
    def received(self) -> list[bytes]:
        return [message.data for message in self.peer.messages]


@pytest.fixture
def peer_factory(certificate: tuple[str, str]) -> Iterator[Callable[..., SendPeer]]:
    peers: list[SendPeer] = []

    def make(**kwargs: object) -> SendPeer:
        peer = SendPeer(certificate, **kwargs)  # type: ignore[arg-type]
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.peer.stop()


# -- against Petrel ------------------------------------------------------------------------


def test_golden_transcript_against_petrel(petrel: PetrelServer) -> None:
    result = petrel_send(
        "--server", f"127.0.0.1:{petrel.port}",
        "--helo", "wheelersoftware.com",
        "--from", "darth.vader@deathstar.com",
        "--to", "willie@mx.petrel.test",
        "--subject", "Great article",
        "--body", "Hi Willie,\n.I enjoyed your article.\nDarth Vader\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    golden = GOLDEN / "send_petrel.txt"
    if os.environ.get("PETREL_UPDATE_GOLDEN"):
        golden.write_text(normalise(result.stdout, petrel.port))
    assert normalise(result.stdout, petrel.port) == golden.read_text()
    [message] = petrel.wait_for_messages("willie")
    assert b"\n.I enjoyed your article.\n" in message  # the dot was stuffed and unstuffed


def test_pipelined_json_summary_with_a_refused_recipient(petrel: PetrelServer) -> None:
    result = petrel_send(
        "--server", f"127.0.0.1:{petrel.port}", "--pipeline", "--json", "--size",
        "--notify", "SUCCESS,FAILURE", "--from", "a@example.org",
        "--to", "willie@mx.petrel.test", "--to", "x@elsewhere.example",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and re.fullmatch(r"[0-9A-Z]{14}", summary["queue_id"])
    assert summary["recipients_refused"] == ["x@elsewhere.example"]
    commands = [r["command"] for r in summary["replies"]]
    assert commands == ["CONNECT", "EHLO", "MAIL", "RCPT", "RCPT", "DATA", "END", "QUIT"]
    assert {"connect", "mail", "data", "total"} <= set(summary["timings"])
    assert petrel.wait_for_messages("willie")


def test_data_file_from_stdin_is_sent_as_is(petrel: PetrelServer) -> None:
    text = "Subject: raw\n\nline one\n.\n..two dots\nno newline at the end"
    result = petrel_send(
        "--server", f"127.0.0.1:{petrel.port}", "--quiet", "--from", "a@example.org",
        "--to", "raw@mx.petrel.test", "--data", "-", stdin=text,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == ""
    [message] = petrel.wait_for_messages("raw")
    assert message.endswith(b"Subject: raw\n\nline one\n.\n..two dots\nno newline at the end\n")


def test_quit_after_ehlo_sends_no_mail(petrel: PetrelServer) -> None:
    result = petrel_send("--server", f"127.0.0.1:{petrel.port}", "--quit-after", "ehlo")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[-2:] == ["C: QUIT", "S: 221 2.0.0 mx.petrel.test closing connection"]
    assert not any(line.startswith("C: MAIL") for line in lines)


def test_starttls_against_petrel_with_its_self_signed_certificate(petrel: PetrelServer) -> None:
    """--starttls verifies the server: with Petrel's generated certificate as the CA it works."""
    ca = petrel.data_dir / "tls" / "cert.pem"
    base = ("--server", f"127.0.0.1:{petrel.port}", "--from", "a@example.org")
    result = petrel_send(*base, "--starttls", "--ca", str(ca), "--to", f"tls@{HOSTNAME}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "C: STARTTLS" in result.stdout
    assert "*** TLS started: TLSv1." in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("C: EHLO")][1:]
    assert b"with ESMTPS id" in petrel.wait_for_messages("tls")[0]
    # Without the CA the self-signed certificate is refused: the TLS stage fails (exit 6).
    refused = petrel_send(*base, "--starttls", "--to", f"tls@{HOSTNAME}")
    assert refused.returncode == 6


# -- exit statuses ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exit_3_when_the_connection_is_refused() -> None:
    result = petrel_send("--server", f"127.0.0.1:{_free_port()}", "--to", "a@b.c")
    assert result.returncode == 3
    assert "cannot connect" in result.stdout


@pytest.mark.parametrize(
    ("refuse", "code", "extra"),
    [
        ("greeting", 4, []),
        ("ehlo", 5, []),
        ("tls", 6, ["--starttls", "--insecure"]),
        ("auth", 7, ["--auth", "PLAIN", "--user", "willie", "--password-stdin"]),
        ("mail", 8, []),
        ("rcpt", 9, []),
        ("data", 10, []),
        ("message", 10, []),
    ],
)
def test_exit_status_for_each_stage(
    peer_factory: Callable[..., SendPeer], refuse: str, code: int, extra: list[str]
) -> None:
    peer = peer_factory(refuse=refuse, starttls=True, auth=("PLAIN", "LOGIN"))
    result = petrel_send(
        "--server", peer.address, "--to", "willie@peer.test", *extra, stdin=PASSWORD + "\n"
    )
    assert result.returncode == code, result.stdout + result.stderr
    stage = {4: "greeting", 5: "ehlo", 6: "tls", 7: "auth", 8: "mail", 9: "rcpt", 10: "data"}
    assert f"failed at {stage[code]}" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_pipelined_rcpt_refusal_consumes_every_reply(peer_factory: Callable[..., SendPeer]) -> None:
    peer = peer_factory(refuse="rcpt")
    result = petrel_send("--server", peer.address, "--to", "a@peer.test", "--pipeline")
    assert result.returncode == 9, result.stdout
    assert result.stdout.splitlines()[-1].startswith("S: 221")


def test_quiet_failure_is_one_line_on_stderr(peer_factory: Callable[..., SendPeer]) -> None:
    peer = peer_factory(refuse="mail")
    result = petrel_send("--server", peer.address, "--to", "a@peer.test", "--quiet")
    assert result.returncode == 8 and result.stdout == ""
    assert result.stderr.startswith("petrel send: failed at mail: MAIL FROM refused: 550")


# -- TLS and AUTH ------------------------------------------------------------------------------


def _encoded(password: str) -> list[str]:
    return [
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(b"\0willie\0" + password.encode()).decode(),
    ]


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN", "SCRAM-SHA-256"])
def test_starttls_then_auth_and_the_password_never_shows(
    peer_factory: Callable[..., SendPeer], certificate: tuple[str, str], mechanism: str
) -> None:
    peer = peer_factory(starttls=True, auth=("SCRAM-SHA-256", "PLAIN", "LOGIN"))
    result = petrel_send(
        "--server", peer.address, "--starttls", "--ca", certificate[0],
        "--auth", mechanism, "--user", "willie", "--password-stdin",
        "--from", "darth.vader@deathstar.com", "--to", "willie@peer.test",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "*** TLS started: TLSv1." in out and "peer certificate verified" in out
    for secret in [PASSWORD, *_encoded(PASSWORD)]:
        assert secret not in out
    assert peer.received, "the message reached the peer"
    if mechanism == "LOGIN":
        assert "C: AUTH LOGIN\n" in out
        assert "S: 334 VXNlcm5hbWU6   # Username:" in out
        assert "C: d2lsbGll   # willie" in out
        assert "C: ********   # ********" in out
        assert peer.credentials == [("willie", PASSWORD)]
    elif mechanism == "PLAIN":
        assert "C: AUTH PLAIN ********   # <NUL>willie<NUL>********" in out
        assert peer.credentials == [("willie", PASSWORD)]
    else:
        assert "C: AUTH SCRAM-SHA-256 " in out and "# n,,n=willie,r=" in out


def test_auth_auto_picks_scram_and_a_wrong_password_exits_7(
    peer_factory: Callable[..., SendPeer],
) -> None:
    peer = peer_factory(auth=("LOGIN", "PLAIN", "SCRAM-SHA-256"))
    result = petrel_send(
        "--server", peer.address, "--user", "willie", "--password-stdin", "--to", "a@peer.test",
        stdin="wrong-password\n",
    )  # fmt: skip
    assert result.returncode == 7, result.stdout
    assert "C: AUTH SCRAM-SHA-256" in result.stdout
    assert "wrong-password" not in result.stdout


def test_tls_verification_failure_exits_6(peer_factory: Callable[..., SendPeer]) -> None:
    peer = peer_factory(starttls=True)
    result = petrel_send("--server", peer.address, "--starttls", "--to", "a@peer.test")
    assert result.returncode == 6
    assert "TLS handshake failed" in result.stdout


def test_starttls_optional_goes_on_in_clear(peer_factory: Callable[..., SendPeer]) -> None:
    peer = peer_factory()
    result = petrel_send("--server", peer.address, "--starttls-optional", "--to", "a@peer.test")
    assert result.returncode == 0
    assert "STARTTLS not offered; going on without TLS" in result.stdout


def test_help_documents_the_exit_statuses() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "send", "--help"], capture_output=True, text=True
    )
    assert "exit status:" in result.stdout and "9   all RCPT TO refused" in result.stdout


# -- a hostile server (issue 14, item 10) ----------------------------------------------------


def test_scram_with_a_hostile_iteration_count_exits_7_promptly() -> None:
    """A fake server asks for 2 000 000 000 PBKDF2 rounds: refused, not computed for hours."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as f:
            conn.settimeout(30)

            def say(line: str) -> None:
                f.write(line.encode() + b"\r\n")
                f.flush()

            say("220 hostile.test ESMTP")
            for line in iter(f.readline, b""):
                seen.append(line)
                command = line.decode().strip()
                if command.startswith("EHLO"):
                    say("250-hostile.test\r\n250 AUTH SCRAM-SHA-256")
                elif command.startswith("AUTH SCRAM-SHA-256 "):
                    first = base64.b64decode(command.split()[2]).decode()
                    nonce = first.split("r=", 1)[1]
                    server_first = f"r={nonce}srv,s=c2FsdHNhbHQ=,i=2000000000"
                    say("334 " + base64.b64encode(server_first.encode()).decode())
                elif command == "*":
                    say("501 5.5.2 Authentication cancelled")
                elif command == "QUIT":
                    say("221 2.0.0 bye")
                    return
                else:
                    say("502 5.5.2 unexpected")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "petrel", "send", "--timeout", "10",
                "--server", f"127.0.0.1:{listener.getsockname()[1]}",
                "--auth", "SCRAM-SHA-256", "--user", "willie", "--password-stdin",
                "--to", "a@hostile.test", "--quiet",
            ],
            input=PASSWORD + "\n", capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        thread.join(timeout=30)
        listener.close()
    assert result.returncode == 7, result.stdout + result.stderr
    assert result.stderr == (
        "petrel send: failed at auth: SCRAM: the server asks for 2000000000 iterations;"
        " refusing counts outside 4096-100000\n"
    )
    assert b"*\r\n" in seen and seen[-1] == b"QUIT\r\n"  # the exchange was left properly
