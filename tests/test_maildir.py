"""Local Maildir delivery: layout, LF conversion, name safety, streaming, batches."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petrel import fsutil
from petrel.delivery import maildir
from petrel.delivery.maildir import (
    DeliveryItem,
    LineEndConverter,
    deliver_batch,
    mailbox_path,
)
from petrel.queue import Envelope, Recipient, Spool, new_queue_id

PREFIX = b"Return-Path: <alice@example.test>\nDelivered-To: bob@example.test\n"
NAME_RE = re.compile(r"(\d+)\.M(\d{6})P(\d+)Q(\d+)\.([^,/]+),S=(\d+)")


def new_files(maildir: Path) -> list[Path]:
    return sorted((maildir / "new").iterdir())


def only_message(maildir: Path) -> bytes:
    [path] = new_files(maildir)
    return path.read_bytes()


def test_delivery_creates_the_maildir_and_a_file_in_new(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    body = b"Subject: hello\r\n\r\nline one\r\nline two\r\n"
    assert deliver_batch(root, [DeliveryItem("example.test", "bob", PREFIX, body)]) == [None]
    maildir = root / "example.test" / "bob"
    for sub in ("tmp", "new", "cur"):
        assert stat.S_IMODE(os.stat(maildir / sub).st_mode) == 0o700
    assert list((maildir / "tmp").iterdir()) == []
    assert list((maildir / "cur").iterdir()) == []
    [path] = new_files(maildir)
    expected = PREFIX + b"Subject: hello\n\nline one\nline two\n"
    assert path.read_bytes() == expected
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    match = NAME_RE.fullmatch(path.name)
    assert match is not None
    assert abs(int(match[1]) - time.time()) < 60
    assert int(match[3]) == os.getpid()
    assert int(match[6]) == len(expected)


def test_without_syncfs_each_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir, "HAVE_SYNCFS", False)
    root = tmp_path / "mailboxes"
    items = [DeliveryItem("example.test", u, PREFIX, b"x\r\n") for u in ("bob", "bob", "carol")]
    assert deliver_batch(root, items) == [None, None, None]
    assert len(new_files(root / "example.test" / "bob")) == 2
    assert only_message(root / "example.test" / "carol") == PREFIX + b"x\n"


@pytest.mark.parametrize("count", [1, fsutil.PER_FILE_SYNC_MAX + 4])  # fsyncs, then syncfs
def test_a_failed_flush_delivers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Nothing is reported delivered, and nothing is left to be read, if it is not durable."""

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "write-back failed")

    monkeypatch.setattr(os, "fsync", broken)
    monkeypatch.setattr(fsutil, "_raw_syncfs", broken)
    root = tmp_path / "mailboxes"
    items = [DeliveryItem("example.test", "bob", PREFIX, b"m%d\r\n" % i) for i in range(count)]
    results = deliver_batch(root, items)
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)
    maildir = root / "example.test" / "bob"
    assert os.listdir(maildir / "new") == [] and os.listdir(maildir / "tmp") == []


def test_names_sort_in_arrival_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ls new/` lists mail as it came, also within one second (M84126 vs M123456)."""
    clock = iter([1_795_000_000_084_126_000, 1_795_000_000_123_456_000])
    monkeypatch.setattr(maildir.time, "time_ns", lambda: next(clock))
    root = tmp_path / "mailboxes"
    for body in (b"first\r\n", b"second\r\n"):
        assert deliver_batch(root, [DeliveryItem("example.test", "bob", PREFIX, body)]) == [None]
    [first, second] = new_files(root / "example.test" / "bob")
    assert (first.read_bytes(), second.read_bytes()) == (PREFIX + b"first\n", PREFIX + b"second\n")


def test_names_are_lower_cased_and_unique(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    items = [DeliveryItem("Example.TEST", "Bob", PREFIX, b"m%d\r\n" % i) for i in range(5)]
    assert deliver_batch(root, items) == [None] * 5
    assert mailbox_path(root, "Example.TEST", "Bob") == root / "example.test" / "bob"
    files = new_files(root / "example.test" / "bob")
    assert len(files) == 5
    assert sorted(f.read_bytes() for f in files) == sorted(PREFIX + b"m%d\n" % i for i in range(5))


def test_eight_bit_bytes_are_preserved_exactly(tmp_path: Path) -> None:
    body = bytes(b for b in range(256) if b != 13) * 4  # every byte value except CR
    root = tmp_path / "mailboxes"
    assert deliver_batch(root, [DeliveryItem("example.test", "bob", PREFIX, body)]) == [None]
    assert only_message(root / "example.test" / "bob") == PREFIX + body


def test_lone_cr_is_kept_and_only_crlf_becomes_lf(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    body = b"a\rb\r\r\nc\n\rd\r"
    assert deliver_batch(root, [DeliveryItem("example.test", "bob", PREFIX, body)]) == [None]
    assert only_message(root / "example.test" / "bob") == PREFIX + b"a\rb\r\nc\n\rd\r"


@pytest.mark.parametrize(
    ("domain", "user"),
    [
        ("example.test", ""),
        ("example.test", "."),
        ("example.test", ".."),
        ("example.test", ".hidden"),
        ("example.test", "../escape"),
        ("example.test", "a/b"),
        ("example.test", "nul\0byte"),
        ("example.test", "tab\tname"),
        ("example.test", "del\x7f"),
        ("example.test", "c1\x85"),
        ("..", "bob"),
        ("", "bob"),
        ("a/b", "bob"),
    ],
)
def test_unsafe_names_fail_alone(tmp_path: Path, domain: str, user: str) -> None:
    root = tmp_path / "mailboxes"
    items = [
        DeliveryItem("example.test", "alice", PREFIX, b"first\r\n"),
        DeliveryItem(domain, user, PREFIX, b"evil\r\n"),
        DeliveryItem("example.test", "carol", PREFIX, b"last\r\n"),
    ]
    first, bad, last = deliver_batch(root, items)
    assert first is None and last is None
    assert isinstance(bad, ValueError)
    assert only_message(root / "example.test" / "alice") == PREFIX + b"first\n"
    assert only_message(root / "example.test" / "carol") == PREFIX + b"last\n"
    assert sorted(os.listdir(root)) == ["example.test"]
    assert sorted(os.listdir(root / "example.test")) == ["alice", "carol"]
    assert sorted(os.listdir(tmp_path)) == ["mailboxes"]


def test_utf8_user_names_are_allowed(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    assert deliver_batch(root, [DeliveryItem("exämple.test", "Jösé", PREFIX, b"x\r\n")]) == [None]
    assert only_message(root / "exämple.test" / "jösé") == PREFIX + b"x\n"


def test_streaming_with_crlf_split_across_chunks(tmp_path: Path) -> None:
    chunks = [b"Subject: s\r", b"\n\r\nbody\r", b"\r\n", b"end\r", b"\n", b"\r"]

    def source() -> Iterator[bytes]:
        yield from chunks

    root = tmp_path / "mailboxes"
    items = [DeliveryItem("example.test", u, PREFIX, source) for u in ("bob", "carol")]
    assert deliver_batch(root, items) == [None, None]
    expected = PREFIX + b"Subject: s\n\nbody\r\nend\n\r"
    assert only_message(root / "example.test" / "bob") == expected
    assert only_message(root / "example.test" / "carol") == expected


def test_a_failing_body_fails_only_its_item(tmp_path: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial\r\n"
        raise OSError(5, "Input/output error")

    root = tmp_path / "mailboxes"
    items = [
        DeliveryItem("example.test", "bob", PREFIX, broken),
        DeliveryItem("example.test", "carol", PREFIX, b"fine\r\n"),
    ]
    bad, good = deliver_batch(root, items)
    assert isinstance(bad, OSError) and good is None
    bob = root / "example.test" / "bob"
    assert list((bob / "tmp").iterdir()) == [] and list((bob / "new").iterdir()) == []
    assert only_message(root / "example.test" / "carol") == PREFIX + b"fine\n"


def test_a_file_where_a_maildir_belongs_fails_alone(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    (root / "example.test").mkdir(parents=True)
    (root / "example.test" / "bob").write_bytes(b"not a maildir")
    items = [
        DeliveryItem("example.test", "bob", PREFIX, b"x\r\n"),
        DeliveryItem("example.test", "carol", PREFIX, b"y\r\n"),
    ]
    bad, good = deliver_batch(root, items)
    assert isinstance(bad, OSError) and good is None
    assert (root / "example.test" / "bob").read_bytes() == b"not a maildir"
    assert only_message(root / "example.test" / "carol") == PREFIX + b"y\n"


def test_an_operator_symlinked_maildir_is_used(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    assert deliver_batch(root, [DeliveryItem("example.test", "bob", PREFIX, b"1\r\n")]) == [None]
    moved = tmp_path / "bigdisk" / "bob"
    moved.parent.mkdir()
    os.rename(root / "example.test" / "bob", moved)
    (root / "example.test" / "bob").symlink_to(moved)
    assert deliver_batch(root, [DeliveryItem("example.test", "bob", PREFIX, b"2\r\n")]) == [None]
    assert sorted(f.read_bytes() for f in new_files(moved)) == [PREFIX + b"1\n", PREFIX + b"2\n"]


def test_big_body_streams_from_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    spool.open()
    line = b"0123456789" * 7 + b"\r\n"
    count = 40_000  # ~3 MiB, several read chunks
    envelope = Envelope(new_queue_id(), "a@example.test", [Recipient("b@x.test")], time.time())
    writer = spool.begin(envelope)
    for _ in range(count):
        writer.write(line)
    asyncio.run(spool.commit(writer))
    root = tmp_path / "mailboxes"
    item = DeliveryItem("example.test", "bob", PREFIX, lambda: spool.iter_body(writer.queue_id))
    assert deliver_batch(root, [item]) == [None]
    data = only_message(root / "example.test" / "bob")
    assert data == PREFIX + line.replace(b"\r\n", b"\n") * count
    spool.close()


_crlf_heavy = st.lists(st.sampled_from([b"\r", b"\n", b"a"]), max_size=12).map(b"".join)


@given(st.lists(_crlf_heavy, max_size=12))
def test_line_end_conversion_is_independent_of_chunking(chunks: list[bytes]) -> None:
    converter = LineEndConverter()
    out = b"".join(converter.feed(c) for c in chunks) + converter.end()
    assert out == b"".join(chunks).replace(b"\r\n", b"\n")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=8))
def test_delivered_bytes_are_independent_of_chunking(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        item = DeliveryItem("example.test", "bob", PREFIX, lambda: iter(chunks))
        assert deliver_batch(root, [item]) == [None]
        [path] = new_files(root / "example.test" / "bob")
        expected = PREFIX + b"".join(chunks).replace(b"\r\n", b"\n")
        assert path.read_bytes() == expected
        assert path.name.endswith(f",S={len(expected)}")


def test_a_delivery_repeated_after_a_crash_is_recognised(tmp_path: Path) -> None:
    """The key in the file name lets a recovered queue see what it already delivered."""
    item = DeliveryItem(
        "example.test", "ann", b"Delivered-To: ann@example.test\n", b"x\r\n", key="1K0ABCDEFGHIJKR0"
    )
    assert deliver_batch(tmp_path, [item]) == [None]
    new = tmp_path / "example.test" / "ann" / "new"
    [first] = os.listdir(new)
    assert "K1K0ABCDEFGHIJKR0." in first
    # A reader moved it to cur/ meanwhile; the repeat still finds it and writes nothing.
    os.rename(new / first, new.parent / "cur" / f"{first}:2,S")
    again = DeliveryItem(
        item.domain, item.user, item.prefix, item.body_source, key=item.key, maybe_done=True
    )
    assert deliver_batch(tmp_path, [again]) == [None]
    assert os.listdir(new) == []
    # Another recipient index of the same message is a different delivery.
    other = DeliveryItem(
        item.domain,
        item.user,
        item.prefix,
        item.body_source,
        key="1K0ABCDEFGHIJKR1",
        maybe_done=True,
    )
    assert deliver_batch(tmp_path, [other]) == [None]
    assert len(os.listdir(new)) == 1


def test_a_recovered_backlog_lists_each_mailbox_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash each recovered delivery is checked against one listing per mailbox
    (issue 14: a listing per message cost 40 ms each in a mailbox of 46 730 files)."""
    keys = [f"{new_queue_id()}R0" for _ in range(40)]
    done = [DeliveryItem("example.test", "ann", PREFIX, b"x\r\n", key=k) for k in keys[:30]]
    assert deliver_batch(tmp_path, done) == [None] * 30
    listings: list[str] = []
    real_listdir = os.listdir

    def counting_listdir(path: str | Path) -> list[str]:
        listings.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(maildir.os, "listdir", counting_listdir)
    delivered = maildir.DeliveredKeys(tmp_path)
    repeat = [
        DeliveryItem("example.test", "ann", PREFIX, b"x\r\n", key=k, maybe_done=True) for k in keys
    ]
    for start in range(0, 40, 8):  # several batches, as the queue manager sends them
        assert deliver_batch(tmp_path, repeat[start : start + 8], delivered) == [None] * 8
    assert len(listings) == 2  # new/ and cur/ of the one mailbox, once
    assert len(new_files(tmp_path / "example.test" / "ann")) == 40  # 30 kept, 10 written


# -- paths are not followed where a hostile owner could plant a link (issue 14, 8) ----------


def _item(user: str = "bob", domain: str = "example.test") -> DeliveryItem:
    return DeliveryItem(domain, user, PREFIX, b"x\r\n")


def test_a_symlinked_mailboxes_dir_is_refused_and_nothing_goes_through_it(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "root-only"
    elsewhere.mkdir(mode=0o700)
    root = tmp_path / "mailboxes"
    root.symlink_to(elsewhere)
    results = deliver_batch(root, [_item("bob"), _item("carol")])
    assert all(isinstance(r, fsutil.UnsafePathError) for r in results)
    assert "symbolic link" in str(results[0]) and str(root) in str(results[0])
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_domain_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "root-only"
    elsewhere.mkdir(mode=0o700)
    root = tmp_path / "mailboxes"
    root.mkdir()
    (root / "example.test").symlink_to(elsewhere)
    bad, good = deliver_batch(root, [_item("bob"), _item("carol", "other.test")])
    assert isinstance(bad, fsutil.UnsafePathError) and good is None
    assert list(elsewhere.iterdir()) == []
    assert only_message(root / "other.test" / "carol") == PREFIX + b"x\n"


def test_a_symlinked_tmp_inside_a_maildir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    assert deliver_batch(root, [_item()]) == [None]
    elsewhere = tmp_path / "root-only"
    elsewhere.mkdir(mode=0o700)
    tmp = root / "example.test" / "bob" / "tmp"
    tmp.rmdir()
    tmp.symlink_to(elsewhere)
    [result] = deliver_batch(root, [_item()])
    assert isinstance(result, fsutil.UnsafePathError)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_mailboxes_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "mailboxes"
    root.mkdir()
    root.chmod(mode)
    [result] = deliver_batch(root, [_item()])
    assert isinstance(result, fsutil.UnsafePathError) and "writable" in str(result)
    assert list(root.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_domain_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    (root / "example.test").mkdir(parents=True)
    os.chown(root / "example.test", 65534, 65534)
    [result] = deliver_batch(root, [_item()])
    assert isinstance(result, fsutil.UnsafePathError) and "uid 65534" in str(result)
    assert list((root / "example.test").iterdir()) == []


# -- tmp/ clean-up (issue 14, 11) ------------------------------------------------------------


def _aged(path: Path, hours: float, data: bytes = b"partial") -> Path:
    path.write_bytes(data)
    then = time.time() - hours * 3600
    os.utime(path, (then, then))
    return path


def test_clean_tmp_removes_only_files_older_than_36_hours(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    assert deliver_batch(root, [_item("bob"), _item("carol", "other.test")]) == [None, None]
    bob = root / "example.test" / "bob"
    old = [_aged(bob / "tmp" / f"old{i}", 40) for i in range(3)]
    young = _aged(bob / "tmp" / "young", 35)
    fresh = bob / "tmp" / "fresh"
    fresh.write_bytes(b"being written")
    (bob / ".Sent" / "tmp").mkdir(parents=True)  # a Maildir++ folder
    folder_old = _aged(bob / ".Sent" / "tmp" / "old", 48)
    carol_old = _aged(root / "other.test" / "carol" / "tmp" / "old", 100)
    old_new = _aged(bob / "new" / "delivered-long-ago", 1000)  # never touched: not in tmp/
    assert maildir.clean_tmp(root) == (5, 0)
    assert not any(p.exists() for p in [*old, folder_old, carol_old])
    assert young.exists() and fresh.exists() and old_new.exists()
    assert maildir.clean_tmp(root) == (0, 0)


def test_clean_tmp_follows_no_planted_link(tmp_path: Path) -> None:
    """Links in tmp/, a symlinked tmp/ and a symlinked domain are left alone; their targets too."""
    root = tmp_path / "mailboxes"
    assert deliver_batch(root, [_item("bob")]) == [None]
    precious = tmp_path / "precious"
    precious.mkdir()
    target = _aged(precious / "file", 100)
    bob = root / "example.test" / "bob"
    (bob / "tmp" / "link").symlink_to(target)
    os.utime(bob / "tmp" / "link", (0, 0), follow_symlinks=False)
    (root / "evil.test").symlink_to(precious)
    (bob / ".Folder").mkdir()
    (bob / ".Folder" / "tmp").symlink_to(precious)
    removed, skipped = maildir.clean_tmp(root)
    assert removed == 0 and skipped >= 1
    assert target.exists() and (bob / "tmp" / "link").is_symlink()


def test_clean_tmp_cleans_an_operator_symlinked_maildir(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    assert deliver_batch(root, [_item("bob")]) == [None]
    moved = tmp_path / "bigdisk" / "bob"
    moved.parent.mkdir()
    os.rename(root / "example.test" / "bob", moved)
    (root / "example.test" / "bob").symlink_to(moved)
    old = _aged(moved / "tmp" / "old", 40)
    assert maildir.clean_tmp(root) == (1, 0)
    assert not old.exists()


def test_clean_tmp_without_mailboxes_is_a_no_op(tmp_path: Path) -> None:
    assert maildir.clean_tmp(tmp_path / "mailboxes") == (0, 0)
