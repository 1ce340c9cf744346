"""``[server] user``: root binds and reads keys, then every process runs as the user.

Real ``petrel serve`` and ``petrel`` processes started as root (skipped otherwise),
with a throwaway system user made for this module. The user must be able to run the
interpreter: a pyenv under /root (0700) is reached through a read-only bind mount,
as a real install under /usr or /opt would be reached directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until
from petrel.config import ConfigError, load_config
from petrel.intake.pickup import PickupWatcher
from petrel.policy.users import Users, hash_password
from petrel.privileges import Account, drop_privileges, warn_root_without_user
from petrel.server.tls import generate_self_signed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (as `make test` has in CI)")

_STARTED = re.compile(r"event=worker-started worker=(\d+) pid=(\d+)")
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    name = f"petrel-test-{os.getpid()}"
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot add a system user: {made.stderr.strip()}")
    entry = pwd.getpwnam(name)
    try:
        yield Account(name, entry.pw_uid, entry.pw_gid)
    finally:
        # A killed server's workers leave within a second; userdel refuses till then.
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: subprocess.run(["userdel", name], capture_output=True).returncode == 0,
                timeout=10,
                what=f"userdel {name}",
            )
        subprocess.run(["userdel", "--force", name], check=False, capture_output=True)


def _runs_as(account: Account, python: str, env: dict[str, str] | None) -> bool:
    with contextlib.suppress(PermissionError):  # not even the interpreter can be run
        return _probe(account, python, env)
    return False


def _probe(account: Account, python: str, env: dict[str, str] | None) -> bool:
    probe = subprocess.run(
        [python, "-c", "import petrel.app, argon2, cryptography"],
        user=account.uid,
        group=account.gid,
        extra_groups=[],
        cwd="/",
        env=env,
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def runtime(account: Account) -> Iterator[tuple[str, dict[str, str] | None]]:
    """(interpreter, environment) with which the service user can run petrel."""
    if _runs_as(account, sys.executable, None):
        yield sys.executable, None
        return
    mount = Path(tempfile.mkdtemp(prefix="petrel-python-", dir="/tmp"))
    mount.chmod(0o755)
    bound = subprocess.run(
        ["mount", "--bind", "-o", "ro", sys.base_prefix, str(mount)], capture_output=True
    )
    if bound.returncode != 0:
        mount.rmdir()
        pytest.skip(f"the interpreter is out of the user's reach: {bound.stderr.decode()}")
    try:
        real = Path(os.path.realpath(sys.executable)).relative_to(sys.base_prefix)
        python = str(mount / real)
        paths = dict.fromkeys([str(SRC), sysconfig.get_paths()["purelib"]])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        libdir = mount / Path(str(sysconfig.get_config_var("LIBDIR"))).relative_to(sys.base_prefix)
        env["LD_LIBRARY_PATH"] = str(libdir)  # its rpath names the original libpython
        env.pop("VIRTUAL_ENV", None)
        if not _runs_as(account, python, env):
            pytest.skip("the service user cannot run the interpreter, even bind-mounted")
        yield python, env
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


@pytest.fixture
def as_user(
    account: Account, runtime: tuple[str, dict[str, str] | None]
) -> Iterator[Callable[..., PetrelServer]]:
    """Servers with ``user`` set, rooted in a /tmp dir the user can enter (0755, root's)."""
    servers: list[PetrelServer] = []
    roots: list[Path] = []

    def make(server_config: str = "", extra_config: str = "", start: bool = True) -> PetrelServer:
        root = Path(tempfile.mkdtemp(prefix="petrel-priv-", dir="/tmp"))
        root.chmod(0o755)
        roots.append(root)
        server = PetrelServer(
            root, extra_config, server_config=f'user = "{account.name}"\n{server_config}'
        )
        server.python, server.env = runtime
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        if server.process is not None:
            server.stop()  # the workers too, so that the user can be deleted at once
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _ids(pid: int) -> dict[str, list[int]]:
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def _not_the_users(root: Path, account: Account) -> list[str]:
    wrong = []
    for top, dirs, files in os.walk(root):
        for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
            st = os.lstat(name)
            if (st.st_uid, st.st_gid) != (account.uid, account.gid):
                wrong.append(f"{name} {st.st_uid}:{st.st_gid}")
    return wrong


def _send(server: PetrelServer, subject: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail(
            "alice@client.test",
            [f"bob@{HOSTNAME}"],
            f"From: alice@client.test\r\nSubject: {subject}\r\n\r\nbody\r\n",
        )


def test_serve_runs_parent_and_workers_as_the_user_and_data_dir_is_theirs(
    as_user: Callable[..., PetrelServer], account: Account
) -> None:
    server = as_user("workers = 2")
    wait_until(lambda: server.log_text().count("event=worker-ready") >= 2, what="workers ready")
    assert f"event=privileges-dropped user={account.name}" in server.log_text()
    assert server.process is not None
    workers = [int(pid) for _, pid in _STARTED.findall(server.log_text())]
    assert len(workers) == 2
    for pid in [server.process.pid, *workers]:
        ids = _ids(pid)
        assert ids["Uid"] == [account.uid] * 4, pid  # real, effective, saved, fs
        assert ids["Gid"] == [account.gid] * 4, pid
        assert ids["Groups"] == [], pid
    _send(server, "as the user")
    [message] = server.wait_for_messages("bob")
    assert b"Subject: as the user" in message
    server.wait_queue_empty()
    assert _not_the_users(server.data_dir, account) == []
    assert server.stop() == 0


def test_the_drop_cannot_be_undone(account: Account) -> None:
    pid = os.fork()
    if pid == 0:  # the child: drop, then try to take root back
        status = 3
        try:
            drop_privileges(account)
            try:
                os.setuid(0)
                status = 1
            except PermissionError:
                status = 0 if os.getresuid() == (account.uid,) * 3 else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_user_add_as_root_leaves_the_users_file_to_the_user_and_auth_works(
    as_user: Callable[..., PetrelServer], account: Account
) -> None:
    server = as_user(extra_config="[auth]\nallow_plaintext_auth = true\n")
    server.add_user(f"ann@{HOSTNAME}", "sesame")  # run as root
    users = server.data_dir / "users"
    assert (users.stat().st_uid, users.stat().st_gid) == (account.uid, account.gid)
    assert users.stat().st_mode & 0o777 == 0o600
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.login(f"ann@{HOSTNAME}", "sesame")[0] == 235
    assert _not_the_users(server.data_dir, account) == []


def test_sendmail_as_root_leaves_the_spool_file_to_the_user_and_it_is_delivered(
    as_user: Callable[..., PetrelServer], account: Account
) -> None:
    server = as_user()
    assert server.stop() == 0
    sendmail = [server.python, "-m", "petrel", "sendmail", "--config", str(server.config_path)]
    queued = subprocess.run(
        [*sendmail, f"bob@{HOSTNAME}"],
        input=b"Subject: from root\n\nhello\n",
        capture_output=True,
        env=server.env,
        cwd=server.root,
        timeout=60,
    )
    assert queued.returncode == 0, queued.stderr
    assert len(server.queue_files()) == 1
    assert _not_the_users(server.data_dir, account) == []  # the spool files included
    server.start()
    [message] = server.wait_for_messages("bob")
    assert b"Subject: from root" in message
    assert b"uid 0" in message  # the Received field names the submitter, not the switch
    server.wait_queue_empty()
    assert "pickup-unreadable" not in server.log_text()


def test_pickup_logs_a_spool_file_it_may_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Unreadable:
        root = tmp_path

        def load(self, queue_id: str) -> None:
            raise PermissionError(13, "Permission denied", str(tmp_path / "active" / queue_id))

    watcher = PickupWatcher(Unreadable(), manager=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="petrel.pickup"):
        assert watcher._submit("AB12CD34EF") is False
        assert watcher._submit("AB12CD34EF") is False  # once per message, not every scan
    lines = [r for r in caplog.records if r.getMessage() == "pickup-unreadable"]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR


def test_a_failed_read_of_the_users_file_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    users = Users(path)
    path.write_text(f"ann@{HOSTNAME}:{hash_password('pw')}:\n")
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: (_ for _ in ()).throw(PermissionError))
    with pytest.raises(PermissionError):
        users.get(f"ann@{HOSTNAME}")
    monkeypatch.setattr(Path, "read_text", real_read)  # the owner fixed: same signature
    user = users.get(f"ann@{HOSTNAME}")
    assert user is not None and user.address == f"ann@{HOSTNAME}"


def test_root_on_a_privileged_port_without_user_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def config(text: str) -> object:
        path = tmp_path / "petrel.toml"
        path.write_text(f'[server]\ndata_dir = "data"\n{text}')
        return load_config(path)

    low = '[[listener]]\naddress = "127.0.0.1:25"\nmode = "smtp"\n'
    high = '[[listener]]\naddress = "127.0.0.1:2525"\nmode = "smtp"\n'
    with caplog.at_level(logging.WARNING, logger="petrel"):
        assert warn_root_without_user(config(low)) is True  # type: ignore[arg-type]
        assert warn_root_without_user(config(high)) is False  # type: ignore[arg-type]
        assert warn_root_without_user(config('user = "nobody"\n' + low)) is False  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == ["running-as-root"]


def test_server_user_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "petrel.toml"
    path.write_text('[server]\nuser = "no-such-petrel-user"\n')
    with pytest.raises(ConfigError, match=r"^server\.user: no such user 'no-such-petrel-user'$"):
        load_config(path)
    checked = subprocess.run(
        [sys.executable, "-m", "petrel", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 2
    assert checked.stderr == "petrel: server.user: no such user 'no-such-petrel-user'\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tls_key_only_root_can_read_is_loaded_before_the_drop(
    as_user: Callable[..., PetrelServer], account: Account, tmp_path: Path, workers: int
) -> None:
    keys = tmp_path / "private"  # root's 0700 directory: the user cannot even enter it
    keys.mkdir(mode=0o700)
    cert, key = generate_self_signed(keys, HOSTNAME)
    server = as_user(
        f"workers = {workers}", f'[tls]\ncert = "{cert}"\nkey = "{key}"\n', start=False
    )
    server.start()
    if workers > 1:
        wait_until(lambda: server.log_text().count("event=worker-ready") >= 2, what="workers")
    assert server.log_text().count(f"event=tls-certificate cert={cert}") == workers
    assert "tls-unavailable" not in server.log_text()
    ctx = ssl.create_default_context(cafile=str(cert))
    for _ in range(4):  # more connections than workers: the kernel picks one each time
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.starttls(context=ctx)
            assert client.ehlo("client.test")[0] == 250
