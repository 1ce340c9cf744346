"""The two servers under test, each living only inside the bench's temporary directory.

`PetrelTarget` runs ``petrel serve`` with a bench config (``CONSOLE=1``: with an http
listener, the console page fetched and an ``/api/v1/events`` stream read throughout, to
show what the web console costs the SMTP path). `PostfixTarget` builds a
private Postfix instance (its own config_directory, queue_directory and data_directory,
smtpd on 127.0.0.1:<free port>, local(8) delivering to a Maildir through an alias) and
never writes to /etc/postfix or touches a system instance.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from common import LOOPBACK, BenchError, descendants, free_port, wait_until

DOMAIN = "bench.test"
USER = "bench"
RECIPIENT = f"{USER}@{DOMAIN}"
REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"event=listening address=(\S+):(\d+) mode=smtp")
_HTTP_LISTENING = re.compile(r"event=listening address=(\S+):(\d+) mode=http")


class Target:
    """A running SMTP server: where it listens, where mail lands, which processes are it."""

    name = "?"
    port = 0

    @property
    def maildir(self) -> Path:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class PetrelTarget(Target):
    """``petrel serve`` on 127.0.0.1:0 with raised limits and its own data_dir."""

    def __init__(
        self,
        root: Path,
        workers: str = "1",
        name: str = "petrel",
        dns: str | None = None,
        console: bool = False,
    ) -> None:
        self.root = root
        self.workers = workers
        self.name = name
        self.dns = dns  # a loopback DNS server: the inbound checks on; None: checks off
        self.console = console
        self.events_seen = 0  # SSE frames the console's stream read
        self.data_dir = root / "data"
        self.log_path = root / "petrel.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def maildir(self) -> Path:
        return self.data_dir / "mailboxes" / DOMAIN / USER

    def config_text(self) -> str:
        workers = self.workers if self.workers.isdigit() else f'"{self.workers}"'
        return f"""
[server]
hostname = "mx.{DOMAIN}"
data_dir = "{self.data_dir}"
reverse_dns = false
workers = {workers}

[[listener]]
address = "{LOOPBACK}:0"
mode = "smtp"

[domains]
local = ["{DOMAIN}"]

[limits]
message_size = 104857600
connections = 30000
connections_per_ip = 30000
""" + (
            f"""
[dns]
nameservers = ["{self.dns}"]

[authentication]
checks = true
"""
            if self.dns
            else "\n[authentication]\nchecks = false\n"
) + (
            f'\n[http]\nauth = "none"\n\n[[listener]]\naddress = "{LOOPBACK}:0"\nmode = "http"\n'
            if self.console
            else ""
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "petrel.toml"
        config.write_text(self.config_text())
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        binary = os.environ.get("PETREL", str(REPO / ".venv" / "bin" / "petrel"))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "serve", "--config", str(config)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops us in order
            )

        def listening() -> re.Match[str] | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchError(f"petrel exited early:\n{self.log_path.read_text()[-2000:]}")
            return _LISTENING.search(self.log_path.read_text(errors="replace")[offset:])

        match = wait_until(listening, 30, "petrel to listen")
        self.port = int(match[2])
        self.maildir.mkdir(parents=True, exist_ok=True)
        if self.console:
            found = _HTTP_LISTENING.search(self.log_path.read_text(errors="replace")[offset:])
            if found is None:
                raise BenchError("CONSOLE=1 but petrel serves no http listener")
            self._open_console(f"http://{LOOPBACK}:{found[2]}")

    def _open_console(self, base: str) -> None:
        """What a browser with the console open does: the page, then the event stream."""
        with urllib.request.urlopen(base + "/", timeout=10) as page:
            page.read()
        stream = urllib.request.urlopen(base + "/api/v1/events", timeout=600)

        def read() -> None:
            with contextlib.suppress(OSError, ValueError):
                for line in stream:
                    if line.startswith(b"event: "):
                        self.events_seen += 1

        threading.Thread(target=read, daemon=True, name="console-events").start()

    def pids(self) -> list[int]:
        return descendants(self.process.pid) if self.process else []

    def restart(self) -> None:
        """Stop and start again on the same data_dir (a new port, a fresh heap)."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.console:
            print(f"{self.name}: the console's event stream read {self.events_seen} events")
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


# Services a private instance needs; every one runs outside a chroot (column 5 = n),
# so nothing has to be copied into the temporary queue directory.
_MASTER_CF = """\
{address} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
proxywrite unix - - n -  1 proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixTarget(Target):
    """A private, otherwise stock Postfix: queue + local(8) into a Maildir, fsync on both."""

    name = "postfix"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "lib"
        self.mail_dir = root / "mail"
        self.started = False

    @property
    def maildir(self) -> Path:
        return self.mail_dir / "Maildir"

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and out.returncode != 0:
            raise BenchError(f"postfix {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out

    def main_cf(self) -> str:
        version = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        level = ".".join(version.split(".")[:2])
        return f"""\
compatibility_level = {level}
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
mydestination = {DOMAIN}
inet_interfaces = {LOOPBACK}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps = texthash:{self.config_dir}/aliases
alias_database =
local_recipient_maps = $alias_maps
biff = no
append_dot_mydomain = no
message_size_limit = 104857600
mailbox_size_limit = 0
maillog_file_prefixes = {self.root}
maillog_file = {self.root}/maillog
"""

    def start(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("the Postfix peer needs root (run the bench with sudo)")
        if shutil.which("postfix") is None:
            raise BenchError("postfix is not installed (make bench installs it)")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # postfix and nobody must traverse to their folders
        for folder in (self.config_dir, self.queue_dir, self.data_dir):
            folder.mkdir(mode=0o755, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        # local(8) writes to a file/Maildir alias with the alias table owner's rights;
        # the table belongs to nobody, and so does the Maildir: no system user needed.
        nobody = pwd.getpwnam("nobody")
        for folder in (
            self.mail_dir,
            self.maildir,
            *(self.maildir / s for s in ("new", "cur", "tmp")),
        ):
            folder.mkdir(mode=0o755, exist_ok=True)
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        aliases = self.config_dir / "aliases"
        aliases.write_text(
            f"{USER} {self.maildir}/\npostmaster {self.maildir}/\n"
        )  # postmap format
        os.chown(aliases, nobody.pw_uid, nobody.pw_gid)
        self.port = free_port()
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(address=f"{LOOPBACK}:{self.port}")
        )
        self._postfix("check")
        self._postfix("start")
        self.started = True
        wait_until(self._accepting, 30, "postfix to accept connections")

    def _accepting(self) -> bool:
        import socket

        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=2) as sock:
                return sock.recv(3) == b"220"
        except OSError:
            return False

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        pid = self.master_pid()
        return descendants(pid) if pid else []

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        self._postfix("stop", check=False)
        deadline = time.monotonic() + 20
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid and _alive(pid):
            for child in reversed(descendants(pid)):
                _kill(child)
        self.started = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
