"""Dovecot's LMTP server (dovecot-lmtpd) as the peer of Petrel's LMTP client.

Postfix users hand their domains' mail to Dovecot over LMTP and expect the same here.
These tests run the real ``petrel serve`` against a private Dovecot: its own config,
base_dir, state and Maildirs in a temp dir, LMTP on 127.0.0.1:<free port> and on a
unix socket, never the system's instance. `make test` installs dovecot-core and
dovecot-lmtpd without starting a system Dovecot.

Dovecot's userdb (a passwd-file) knows alice; carol, whose 1-byte quota makes Dovecot
refuse her copy after the message text (552 5.2.2) while alice's is saved; and dave,
the same as a temporary failure (452 4.2.2). bob is unknown (550 5.1.1 at RCPT).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until

DOMAIN = "example.test"
DOVECOT_HOSTNAME = "imap.example.test"
SENDER = f"app@{HOSTNAME}"  # a local mailbox of Petrel's: its DSNs land there

# The extra userdb fields of each user Dovecot knows (per-user plugin settings); a
# 1-byte quota is overflowed by any message.
FULL = "userdb_quota_rule=*:storage=1B"
USERS = {
    "alice": "",
    "carol": FULL,
    "dave": f"{FULL} userdb_quota_full_tempfail=yes",
}

# /usr/sbin is not on every user's PATH.
DOVECOT = shutil.which("dovecot", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")

pytestmark = pytest.mark.skipif(
    DOVECOT is None,
    reason="needs Dovecot (dovecot-core and dovecot-lmtpd; make test installs them)",
)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _greets(family: socket.AddressFamily, address: str | tuple[str, int]) -> bool:
    """Does an LMTP server answer there with a 220 greeting?"""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(address)
            greeting = b""
            while b"\r\n" not in greeting:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                greeting += chunk
            sock.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220 ")
    except OSError:
        return False


class Dovecot:
    """A private Dovecot that speaks only LMTP, on 127.0.0.1:<port> and a unix socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "dovecot.conf"
        self.log_path = root / "dovecot.log"
        self.users_path = root / "users"
        self.socket_path = root / "lmtp.sock"
        self.mail_root = root / "mail"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # Dovecot refuses to deliver as root ("Mail access not allowed for root"), so
        # when the tests run as root the mailboxes belong to nobody.
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
        else:
            self.mail_uid, self.mail_gid = os.geteuid(), os.getegid()

    # -- set-up ------------------------------------------------------------------------

    def set_users(self, users: dict[str, str]) -> None:
        """Write the passwd-file; Dovecot re-reads it at its next lookup after a change."""
        text = "".join(f"{name}@{DOMAIN}:::::::{extra}\n" for name, extra in users.items())
        scratch = self.users_path.with_suffix(".new")
        scratch.write_text(text)
        os.replace(scratch, self.users_path)

    def config_text(self) -> str:
        # Dovecot's own processes run as whoever runs the tests (root in CI).
        me = pwd.getpwuid(os.geteuid()).pw_name
        my_group = grp.getgrgid(os.getegid()).gr_name
        return f"""\
# A private Dovecot for Petrel's tests: LMTP only, everything under {self.root}.
instance_name = petrel-test
base_dir = {self.root}/run
state_dir = {self.root}/state
hostname = {DOVECOT_HOSTNAME}
protocols = lmtp
listen = 127.0.0.1
ssl = no
log_path = {self.log_path}
info_log_path = {self.log_path}
default_internal_user = {me}
default_internal_group = {my_group}
default_login_user = {me}
first_valid_uid = {self.mail_uid}
last_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}
last_valid_gid = {self.mail_gid}
mail_uid = {self.mail_uid}
mail_gid = {self.mail_gid}
mail_location = maildir:{self.mail_root}/%d/%n
mail_plugins = quota
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=1G
}}
# LMTP takes no AUTH, but the auth process will not start without a passdb.
passdb {{
  driver = passwd-file
  args = {self.users_path}
}}
userdb {{
  driver = passwd-file
  args = {self.users_path}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener {self.socket_path} {{
    mode = 0600
  }}
}}
"""

    # -- running -----------------------------------------------------------------------

    def start(self) -> Dovecot:
        for directory in ("run", "state"):
            (self.root / directory).mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, self.mail_uid, self.mail_gid)
        self.set_users(USERS)
        for _ in range(3):  # the free port may be taken before Dovecot binds it: retry
            self.port = _free_port()
            self.config_path.write_text(self.config_text())
            if self._run():
                return self
        raise AssertionError(f"no free port for Dovecot:\n{self.log_text()}")

    def _run(self) -> bool:
        """Start Dovecot in the foreground and wait for both listeners to greet."""
        assert DOVECOT is not None
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config_path)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group, killed whole at the end
            )

        def ready() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                return "exited"
            tcp = _greets(socket.AF_INET, ("127.0.0.1", self.port))
            return "ready" if tcp and _greets(socket.AF_UNIX, str(self.socket_path)) else None

        if wait_until(ready, 30, "Dovecot's LMTP listeners") == "ready":
            return True
        self.stop()
        if "Address already in use" in self.log_text()[offset:]:
            return False
        raise AssertionError(f"dovecot exited early:\n{self.log_text()}")

    def stop(self) -> None:
        """SIGTERM to the master (what `doveadm stop` sends), then SIGKILL to the rest."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=15)
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- mailboxes ---------------------------------------------------------------------

    def messages(self, user: str) -> list[bytes]:
        new = self.mail_root / DOMAIN / user / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def wait_for_messages(self, user: str) -> list[bytes]:
        found = wait_until(lambda: self.messages(user), what=f"mail for {user} in Dovecot")
        assert isinstance(found, list)
        return found


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A running private Dovecot; its log is printed at teardown (shown on failure)."""
    root = Path(tempfile.mkdtemp(prefix="petrel-dovecot-"))
    # Dovecot delivers as the mail user (nobody when we are root): it must get in.
    root.chmod(0o755)
    server = Dovecot(root)
    try:
        yield server.start()
    finally:
        server.stop()
        print(f"--- dovecot.log ---\n{server.log_text()[-6000:]}")
        shutil.rmtree(root, ignore_errors=True)


def _petrel(petrel_factory: Callable[..., PetrelServer], target: str) -> PetrelServer:
    """A Petrel that hands example.test to Dovecot by LMTP at ``target``.

    The test client is no relay client: an LMTP domain is a destination, open to anyone.
    Retries come after a second.
    """
    return petrel_factory(
        f"""
[domains]
lmtp = {{ "{DOMAIN}" = "{target}" }}

[queue]
min_backoff = "1s"
max_backoff = "1s"
"""
    )


BODY = (
    "Hello Alice,\r\n"
    ".a line that starts with a dot, stuffed and unstuffed on both hops\r\n"
    "\r\n" + "x" * 900 + "\r\n-- \r\nthe end\r\n"
)


def _send(petrel: PetrelServer, recipients: list[str], **options: list[str]) -> None:
    message = (
        f"From: {SENDER}\r\n"
        f"To: {', '.join(recipients)}\r\n"
        "Subject: to Dovecot by LMTP\r\n"
        "Message-ID: <lmtp-1@client.test>\r\n"
        "\r\n" + BODY
    ).encode()
    with smtplib.SMTP(petrel.host, petrel.port) as client:
        client.sendmail(SENDER, recipients, message, **options)


def _parse(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def _dsn_blocks(raw: bytes) -> dict[str, email.message.Message]:
    """A delivery status notice's per-recipient blocks, by final recipient."""
    message = email.message_from_bytes(raw)
    assert message.get_content_type() == "multipart/report"
    status = message.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == f"dns; {HOSTNAME}"
    return {block["Final-Recipient"]: block for block in per_recipient}


def test_message_lands_in_dovecots_maildir(dovecot: Dovecot, petrel_factory) -> None:
    petrel = _petrel(petrel_factory, f"127.0.0.1:{dovecot.port}")
    _send(petrel, [f"alice@{DOMAIN}"])
    [raw] = dovecot.wait_for_messages("alice")
    message = _parse(raw)
    # Dovecot's own fields on top: the envelope sender, the final recipient, its trace.
    assert message["Return-Path"] == f"<{SENDER}>"
    assert message["Delivered-To"] == f"alice@{DOMAIN}"
    dovecots, petrels = message.get_all("Received")
    assert f"by {DOVECOT_HOSTNAME} with LMTP" in dovecots
    assert f"by {HOSTNAME} (Petrel) with ESMTP id" in petrels
    assert message["Subject"] == "to Dovecot by LMTP"
    assert message["Message-ID"] == "<lmtp-1@client.test>"
    # Maildir files end lines in LF; the text is otherwise what the client sent.
    assert message.get_content() == BODY.replace("\r\n", "\n")
    petrel.wait_queue_empty()
    assert re.search(rf"event=delivered \S+ to=alice@{DOMAIN} ", petrel.log_text())
    assert "saved mail to INBOX" in dovecot.log_text()


def test_dovecots_per_recipient_verdicts_reach_the_sender(dovecot: Dovecot, petrel_factory) -> None:
    """bob is refused at RCPT, carol after the text (LMTP's own reply for her), and
    alice's copy is saved in the same transaction: one bounce names bob and carol."""
    petrel = _petrel(petrel_factory, f"127.0.0.1:{dovecot.port}")
    _send(petrel, [f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"])
    [delivered] = dovecot.wait_for_messages("alice")
    assert _parse(delivered)["Subject"] == "to Dovecot by LMTP"
    [bounce] = petrel.wait_for_messages("app")
    petrel.wait_queue_empty()
    assert _parse(bounce)["To"] == SENDER
    blocks = _dsn_blocks(bounce)
    assert set(blocks) == {f"rfc822; bob@{DOMAIN}", f"rfc822; carol@{DOMAIN}"}
    bob, carol = blocks[f"rfc822; bob@{DOMAIN}"], blocks[f"rfc822; carol@{DOMAIN}"]
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert f"550 5.1.1 <bob@{DOMAIN}> User doesn't exist" in bob["Diagnostic-Code"]
    assert carol["Action"] == "failed"
    assert carol["Status"] == "5.2.2"
    assert f"552 5.2.2 <carol@{DOMAIN}> Quota exceeded" in carol["Diagnostic-Code"]
    assert bob["Remote-MTA"] == carol["Remote-MTA"] == "dns; 127.0.0.1"
    # The notice's first part, for people: where each verdict came from.
    text = next(_parse(bounce).iter_parts()).get_content()
    assert re.search(rf"<bob@{DOMAIN}>: .* said: 550 .*\(in reply to RCPT TO command\)", text)
    assert re.search(rf"<carol@{DOMAIN}>: .* said: 552 .*\(in reply to end of DATA command\)", text)
    assert dovecot.messages("carol") == []
    assert petrel.messages("app") == [bounce]  # one notice for both


def test_full_mailbox_is_retried_for_that_recipient_only(dovecot: Dovecot, petrel_factory) -> None:
    """dave's 452 after the text defers only dave; once his mailbox has room, the
    retry delivers his copy and alice still has exactly one."""
    petrel = _petrel(petrel_factory, f"127.0.0.1:{dovecot.port}")
    _send(petrel, [f"alice@{DOMAIN}", f"dave@{DOMAIN}"])
    dovecot.wait_for_messages("alice")
    wait_until(
        lambda: re.search(
            rf"event=deferred \S+ to=dave@{DOMAIN} status=4\.2\.2", petrel.log_text()
        ),
        what="dave's deferral",
    )
    dovecot.set_users({**USERS, "dave": ""})  # dave's quota back to the default 1G
    [raw] = dovecot.wait_for_messages("dave")
    assert _parse(raw)["Delivered-To"] == f"dave@{DOMAIN}"
    petrel.wait_queue_empty()
    assert len(dovecot.messages("alice")) == 1
    assert len(re.findall(rf"event=delivered \S+ to=alice@{DOMAIN} ", petrel.log_text())) == 1
    assert petrel.messages("app") == []  # a deferral alone sends no notice this early


def test_delivery_over_dovecots_unix_socket(dovecot: Dovecot, petrel_factory) -> None:
    """The socket path form of the route, with a success notice asked for (NOTIFY)."""
    petrel = _petrel(petrel_factory, str(dovecot.socket_path))
    _send(petrel, [f"alice@{DOMAIN}"], rcpt_options=["NOTIFY=SUCCESS"])
    [raw] = dovecot.wait_for_messages("alice")
    message = _parse(raw)
    assert message["Delivered-To"] == f"alice@{DOMAIN}"
    assert message.get_content() == BODY.replace("\r\n", "\n")
    [notice] = petrel.wait_for_messages("app")
    block = _dsn_blocks(notice)[f"rfc822; alice@{DOMAIN}"]
    assert block["Action"] == "delivered"  # LMTP is final delivery, not relaying
    assert block["Status"] == "2.0.0"
    petrel.wait_queue_empty()
