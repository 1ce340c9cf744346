"""The ``petrel`` command as a newcomer meets it (issue 15): options, messages, errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer


def _petrel(
    *args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "petrel", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "petrel.toml"
    path.write_text(
        f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "{tmp_path / "data"}"\n'
        f"reverse_dns = false\n{extra}"
    )
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("user", "--config", "{c}", "add", f"ann@{HOSTNAME}", "--password-stdin"),
        ("user", "add", "--config", "{c}", f"ann@{HOSTNAME}", "--password-stdin"),
        ("user", "add", f"ann@{HOSTNAME}", "--password-stdin", "--config", "{c}"),
        ("--config", "{c}", "user", "add", f"ann@{HOSTNAME}", "--password-stdin"),
    ],
)
def test_config_is_honoured_wherever_it_stands(tmp_path: Path, args: tuple[str, ...]) -> None:
    config = _config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    argv = [a.replace("{c}", str(config)) for a in args]
    result = _petrel(*argv, cwd=work, stdin="pw\n")
    assert result.returncode == 0, result.stderr
    assert not (work / "petrel-data").exists()
    assert f"ann@{HOSTNAME}:" in (tmp_path / "data" / "users").read_text()
    for listing in (
        ("user", "--config", str(config), "list"),
        ("--config", str(config), "user", "list"),
        ("user", "list", "--config", str(config)),
    ):
        assert _petrel(*listing, cwd=work).stdout.split() == [f"ann@{HOSTNAME}"]
    for queue in (
        ("--config", str(config), "queue", "list"),
        ("queue", "--config", str(config), "list"),
        ("queue", "list", "--config", str(config)),
    ):
        assert _petrel(*queue, cwd=work).returncode == 0
    assert not (work / "petrel-data").exists()
    checked = _petrel("--config", str(config), "check-config", cwd=work)
    assert checked.returncode == 0 and str(config) in checked.stdout


def test_user_bare_name_means_at_hostname_and_each_change_says_so(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    added = _petrel(
        "user", "add", "Willie", "--password-stdin", "--config", config, cwd=tmp_path, stdin="pw\n"
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"petrel: willie@{HOSTNAME}: user added\n"
    listed = _petrel("user", "list", "--config", config, cwd=tmp_path)
    assert listed.stdout.split() == [f"willie@{HOSTNAME}"]
    changed = _petrel(
        "user",
        "passwd",
        "willie",
        "--password-stdin",
        "--config",
        config,
        cwd=tmp_path,
        stdin="pw2\n",
    )
    assert changed.stdout == f"petrel: willie@{HOSTNAME}: password changed\n"
    deleted = _petrel("user", "del", "willie", "--config", config, cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"petrel: willie@{HOSTNAME}: user deleted\n"


@pytest.mark.parametrize(
    ("action", "address", "problem"),
    [
        ("add", "no body@here", "not a valid user address"),
        ("add", "ann@", "not a valid user address"),
        ("add", f"dup@{HOSTNAME}", "user exists"),
        ("passwd", f"ghost@{HOSTNAME}", "no such user"),
    ],
)
def test_user_refusals_come_before_the_password_prompt(
    tmp_path: Path, action: str, address: str, problem: str
) -> None:
    config = str(_config(tmp_path))
    _petrel(
        "user",
        "add",
        f"dup@{HOSTNAME}",
        "--password-stdin",
        "--config",
        config,
        cwd=tmp_path,
        stdin="pw\n",
    )
    # No --password-stdin and no terminal: had it asked, it would fail differently.
    result = _petrel("user", action, address, "--config", config, cwd=tmp_path)
    assert result.returncode == 1
    assert problem in result.stderr and "Password" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_user_add_for_a_foreign_domain_warns_in_one_line(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    added = _petrel(
        "user",
        "add",
        "app@elsewhere.example",
        "--password-stdin",
        "--config",
        config,
        cwd=tmp_path,
        stdin="pw\n",
    )
    assert added.returncode == 0
    assert added.stderr.startswith("petrel: warning: elsewhere.example is not a local")
    assert len(added.stderr.splitlines()) == 1
    local = _petrel(
        "user",
        "add",
        "ann@localhost",
        "--password-stdin",
        "--config",
        config,
        cwd=tmp_path,
        stdin="pw\n",
    )
    assert local.returncode == 0 and local.stderr == ""


def test_user_add_without_a_terminal_or_password_stdin_is_one_line(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    result = _petrel(
        "user", "add", f"ann@{HOSTNAME}", "--config", config, cwd=tmp_path, stdin="pw\n"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("petrel: ") and "--password-stdin" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "data" / "users").exists()


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(("mode", "workers"), [("smtp", 1), ("submissions", 1), ("smtp", 2)])
def test_serve_on_a_busy_port_is_one_line_naming_the_address(
    tmp_path: Path, mode: str, workers: int
) -> None:
    busy = _busy_port()
    try:
        port = busy.getsockname()[1]
        config = _config(
            tmp_path,
            f'workers = {workers}\n[[listener]]\naddress = "127.0.0.1:{port}"\nmode = "{mode}"\n'
            "[delivery]\ndns = false\n",
        )
        result = _petrel("serve", "--config", str(config), cwd=tmp_path)
    finally:
        busy.close()
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last == f"petrel: cannot listen on 127.0.0.1:{port} ({mode}): address already in use"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("missing", ["cert", "key"])
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_missing_tls_file_is_one_line_naming_its_key(
    tmp_path: Path, missing: str, command: str
) -> None:
    from petrel.server.tls import generate_self_signed

    cert, key = generate_self_signed(tmp_path / "pair", HOSTNAME)
    paths = {"cert": cert, "key": key}
    paths[missing] = tmp_path / f"no-such-{missing}.pem"
    config = _config(
        tmp_path,
        f'[tls]\ncert = "{paths["cert"]}"\nkey = "{paths["key"]}"\n'
        '[[listener]]\naddress = "127.0.0.1:0"\nmode = "smtp"\n',
    )
    result = _petrel(command, "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"petrel: tls.{missing}: cannot read {paths[missing]}: No such file or directory\n"
    )


def test_check_config_loads_the_tls_pair(tmp_path: Path) -> None:
    from petrel.server.tls import generate_self_signed

    cert, _ = generate_self_signed(tmp_path / "a", HOSTNAME)
    _, other_key = generate_self_signed(tmp_path / "b", HOSTNAME)
    config = _config(tmp_path, f'[tls]\ncert = "{cert}"\nkey = "{other_key}"\n')
    result = _petrel("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("petrel: tls.cert, tls.key: ")
    good = _config(tmp_path, f'[tls]\ncert = "{cert}"\nkey = "{tmp_path / "a" / "key.pem"}"\n')
    assert _petrel("check-config", "--config", str(good), cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(("hostname", "warned"), [("mailhost", True), (HOSTNAME, False)])
def test_serve_warns_once_of_a_hostname_that_is_not_qualified(
    tmp_path: Path, hostname: str, warned: bool
) -> None:
    server = PetrelServer(tmp_path)
    server.config_path.write_text(
        f'[server]\nhostname = "{hostname}"\ndata_dir = "{server.data_dir}"\n'
        'reverse_dns = false\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "smtp"\n'
        "[delivery]\ndns = false\n"
    )
    server.start()
    try:
        lines = [x for x in server.log_text().splitlines() if "hostname-not-qualified" in x]
    finally:
        assert server.stop() == 0
    if warned:
        assert len(lines) == 1 and "warning" in lines[0] and "hostname=mailhost" in lines[0]
    else:
        assert lines == []


def test_queue_without_an_action_lists(petrel: PetrelServer) -> None:
    bare = petrel.petrel_cli("queue")
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == petrel.petrel_cli("queue", "list").stdout
    assert bare.stdout == f"Mail queue is empty ({petrel.data_dir})\n"  # which spool


def test_empty_queue_on_defaults_names_the_data_dir_it_looked_in(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PETREL_CONFIG"}
    listed = _petrel("queue", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == f"Mail queue is empty ({tmp_path / 'petrel-data'})\n"


def test_send_without_server_says_where_make_serve_listens(tmp_path: Path) -> None:
    helped = _petrel("send", "--help", cwd=tmp_path)
    assert "127.0.0.1:2525" in " ".join(helped.stdout.split())
    probe = socket.socket()
    try:
        if probe.connect_ex(("127.0.0.1", 25)) == 0:
            pytest.skip("something listens on port 25 here")
    finally:
        probe.close()
    result = _petrel("send", "--to", "a@b.test", "--quit-after", "connect", cwd=tmp_path)
    assert result.returncode == 3
    assert "`make serve` listens on 127.0.0.1:2525" in result.stderr
    given = _petrel("send", "--server", "127.0.0.1:25", "--to", "a@b.test", cwd=tmp_path)
    assert given.returncode == 3 and "make serve" not in given.stderr


_WITH_SYSTEM_CONFIG = (
    "import sys; from pathlib import Path; import petrel.config as c;"
    " c.SYSTEM_CONFIG = Path(sys.argv[1]); from petrel.cli import main;"
    " sys.exit(main(sys.argv[2:]))"
)


def test_config_lookup_env_then_etc_petrel_then_embedded(tmp_path: Path) -> None:
    """--config, else $PETREL_CONFIG, else /etc/petrel/petrel.toml, else the defaults."""
    system = tmp_path / "etc"
    system.mkdir()
    (system / "petrel.toml").write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    other = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PETREL_CONFIG"}
    work = tmp_path / "work"
    work.mkdir()

    def petrel(*args: str, system_file: Path, **extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", _WITH_SYSTEM_CONFIG, str(system_file), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=work,
            env={**env, **extra},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    installed = system / "petrel.toml"
    assert petrel("check-config", system_file=installed) == (
        f"petrel: configuration OK ({installed})\n"
    )
    assert petrel("queue", system_file=installed) == f"Mail queue is empty ({tmp_path / 'var'})\n"
    by_env = petrel("check-config", system_file=installed, PETREL_CONFIG=str(other))
    assert by_env == f"petrel: configuration OK ({other})\n"
    given = petrel("check-config", "--config", str(other), system_file=installed)
    assert given == f"petrel: configuration OK ({other})\n"
    absent = system / "none.toml"
    assert petrel("check-config", system_file=absent) == (
        "petrel: configuration OK (embedded defaults)\n"
    )
    assert petrel("queue", system_file=absent) == (
        f"Mail queue is empty ({work / 'petrel-data'})\n"
    )


def test_empty_user_list_names_the_store_on_stderr(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    listed = _petrel("user", "list", "--config", config, cwd=tmp_path)
    assert (listed.returncode, listed.stdout) == (0, "")
    assert listed.stderr == f"petrel: no users in {tmp_path / 'data' / 'users'}\n"


def test_serve_help_says_what_it_does_and_what_each_option_is() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "petrel", "serve", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    text = result.stdout
    assert "Run Petrel in the foreground" in text and "SIGHUP" in text
    for option, words in (("--log-format", "JSON"), ("--log-level", "default: info")):
        described = text.split(option, 2)[-1]  # the option's own entry, after the usage line
        assert words in described.split("\n  -", 1)[0].replace("\n", " "), option
