"""The trust rule of fsutil: who besides Petrel's user may change a path (issue 14, 8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from petrel import fsutil
from petrel.fsutil import UnsafePathError, check_trusted_path, open_dir_at

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")


def test_a_private_tree_under_sticky_tmp_is_trusted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    check_trusted_path(data)
    check_trusted_path(data / "users")  # missing: judged by its directory


def test_a_sticky_world_writable_dir_is_fine_above_but_not_as_data_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "data").mkdir(mode=0o700)
    check_trusted_path(shared / "data")
    with pytest.raises(UnsafePathError, match="writable by group or others"):
        check_trusted_path(shared)


@needs_root
def test_a_symlink_kept_in_someone_elses_directory_is_refused(tmp_path: Path) -> None:
    """The target is fine, but the owner of the link's directory could point it elsewhere."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "link").symlink_to(data)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafePathError, match=f"{theirs} belongs to uid 65534"):
        check_trusted_path(theirs / "link")


def test_a_dangling_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "users").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafePathError, match="dangling"):
        check_trusted_path(tmp_path / "users")


def test_open_dir_at_refuses_a_symlink_and_names_it(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafePathError, match=f"{tmp_path / 'link'} is a symbolic link"):
            open_dir_at(parent, "link", tmp_path / "link")
        fd, created = open_dir_at(parent, "link", tmp_path / "link", follow=True)
        os.close(fd)
        assert not created
        fd, created = open_dir_at(parent, "made", tmp_path / "made")
        os.close(fd)
        assert created and (tmp_path / "made").is_dir()
    finally:
        os.close(parent)


def test_ensure_dir_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(UnsafePathError):
        fsutil.ensure_dir(loose)
