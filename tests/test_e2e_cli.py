"""The ``petrel`` command as a newcomer meets it (issue 15): options, messages, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOSTNAME


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
