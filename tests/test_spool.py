"""The durable spool: round trips, group commit, validation, recovery, and a real kill -9."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petrel import fsutil
from petrel.queue import (
    DEFERRED,
    DELIVERED,
    PENDING,
    CorruptMessageError,
    Envelope,
    Recipient,
    Spool,
    is_valid_queue_id,
    new_queue_id,
)
from petrel.queue import spool as spool_module

SRC = Path(__file__).resolve().parents[1] / "src"


def make_envelope(sender: str = "alice@example.test", **fields: object) -> Envelope:
    return Envelope(
        queue_id=new_queue_id(),
        sender=sender,
        recipients=[Recipient("bob@example.test"), Recipient("carol@example.test")],
        received_at=time.time(),
        **fields,  # type: ignore[arg-type]
    )


async def store(spool: Spool, envelope: Envelope, body: bytes) -> str:
    writer = spool.begin(envelope)
    writer.write(body)
    await spool.commit(writer)
    return writer.queue_id


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "queue")
    s.open()
    yield s
    s.close()


def reopen(spool: Spool) -> Spool:
    """A fresh Spool on the same directory, as after a restart."""
    spool.close()
    fresh = Spool(spool.root)
    fresh.open()
    return fresh


# -- ids -----------------------------------------------------------------------


def test_queue_ids_are_unique_sortable_and_filename_safe() -> None:
    ids = [new_queue_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # one process: the clock part strictly increases
    assert all(is_valid_queue_id(i) and len(i) == 14 and i.isalnum() and i.isupper() for i in ids)


@pytest.mark.parametrize(
    "bad", ["", "../etc/passwd", "0PBQ7N3A1C2D5", "0pbq7n3a1c2d5x", "ILOU" * 4]
)
def test_invalid_queue_ids_are_refused(spool: Spool, bad: str) -> None:
    assert not is_valid_queue_id(bad)
    with pytest.raises(ValueError):
        spool.load(bad)


# -- envelope ------------------------------------------------------------------

_text = st.text(max_size=30)
_recipients = st.builds(
    Recipient,
    address=_text,
    orcpt=st.none() | _text,
    notify=st.none() | st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"])).map(tuple),
    state=st.sampled_from([PENDING, DELIVERED, DEFERRED, "failed"]),
    attempts=st.integers(0, 10_000),
    next_attempt=st.floats(0, 4e9),
    last_error=st.none() | _text,
)
_envelopes = st.builds(
    Envelope,
    queue_id=st.builds(new_queue_id),
    sender=_text,
    recipients=st.lists(_recipients, max_size=5),
    received_at=st.floats(0, 4e9),
    body=st.sampled_from(["7BIT", "8BITMIME", "BINARYMIME"]),
    smtputf8=st.booleans(),
    size=st.none() | st.integers(0, 10**10),
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    envid=st.none() | _text,
    by=st.none() | st.tuples(st.integers(-(10**9), 10**9), st.sampled_from(["R", "N", "RT"])),
    auth=st.none() | _text,
    client_ip=_text,
    client_helo=_text,
    client_rdns=st.none() | _text,
    protocol=st.sampled_from(["ESMTP", "ESMTPSA", "UTF8SMTPS"]),
    auth_user=st.none() | _text,
    hold=st.booleans(),
)


@given(_envelopes)
def test_envelope_json_round_trip(envelope: Envelope) -> None:
    text = envelope.to_json()
    assert text.isascii() and "\n" not in text
    assert Envelope.from_json(text) == envelope
    assert Envelope.from_json(text.encode()).to_json() == text


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{}",
        '{"queue_id":"X","sender":"","recipients":[],"received_at":"now"}',
        '{"queue_id":"X","sender":"","recipients":[1],"received_at":1}',
        '{"queue_id":"X","sender":"","recipients":[],"received_at":1,"hold":1}',
        '{"queue_id":"X","sender":"","recipients":[],"received_at":1,"body":"9BIT"}',
        '{"queue_id":"X","sender":"","recipients":[{"address":"a","state":"lost"}],'
        '"received_at":1}',
        '{"queue_id":"X","sender":"","recipients":[{"address":"a","attempts":true}],'
        '"received_at":1}',
        '{"queue_id":"X","sender":"","recipients":[],"received_at":1,"by":[1]}',
        "not json",
    ],
)
def test_envelope_from_json_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        Envelope.from_json(text)


# -- commit and recover --------------------------------------------------------


@pytest.mark.parametrize("use_syncfs", [True, False])
def test_commit_then_recover_returns_envelope_and_exact_bytes(
    tmp_path: Path, use_syncfs: bool
) -> None:
    if use_syncfs and not fsutil.HAVE_SYNCFS:
        pytest.skip("no syncfs here")
    spool = Spool(tmp_path / "queue", use_syncfs=use_syncfs)
    spool.open()
    envelope = make_envelope(
        sender="",
        body="8BITMIME",
        smtputf8=True,
        size=1234,
        ret="HDRS",
        envid="QQ314159",
        by=(3600, "R"),
        auth="<>",
        client_ip="192.0.2.7",
        client_helo="client.example",
        client_rdns="client.example",
        protocol="UTF8SMTPS",
        auth_user="alice",
    )
    envelope.recipients[0] = Recipient(
        "jösé@exämple.test", orcpt="rfc822;bob@x.test", notify=("FAILURE", "DELAY")
    )
    body = b"Subject: hi\r\n\r\n" + bytes(range(256)) + b"\r\n.\r\nend\r\n"
    queue_id = asyncio.run(store(spool, envelope, body))
    assert spool.sync_count == 1

    spool = reopen(spool)
    [recovered] = spool.recover()
    assert recovered == envelope
    assert spool.read_body(queue_id) == body
    assert spool.body_size(queue_id) == len(body)
    assert spool.load(queue_id) == envelope
    assert spool.list_ids() == [queue_id]
    for sub in ("incoming", "active", "state", "corrupt"):
        assert stat.S_IMODE(os.stat(spool.root / sub).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(spool.root / "active" / queue_id).st_mode) == 0o600
    spool.close()


def test_message_file_format(spool: Spool) -> None:
    envelope = make_envelope()
    body = b"Subject: x\r\n\r\nbody\r\n"
    queue_id = asyncio.run(store(spool, envelope, body))
    data = (spool.root / "active" / queue_id).read_bytes()
    envelope_json = envelope.to_json().encode()
    prefix = b"PETREL1 %d\n" % len(envelope_json) + envelope_json + b"\n"
    crc = zlib.crc32(prefix + body)
    assert data == prefix + body + b"\nPETREL-END %d %08x\n" % (len(body), crc)


def test_fifty_concurrent_commits_share_few_syncs(spool: Spool) -> None:
    bodies = {n: b"Subject: %d\r\n\r\n" % n + os.urandom(1000) for n in range(50)}

    async def main() -> list[str]:
        return await asyncio.gather(
            *(store(spool, make_envelope(f"s{n}@example.test"), bodies[n]) for n in range(50))
        )

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    assert spool.sync_count <= 5
    spool = reopen(spool)
    recovered = {e.queue_id: e for e in spool.recover()}
    assert set(recovered) == set(ids)
    for n, queue_id in enumerate(ids):
        assert recovered[queue_id].sender == f"s{n}@example.test"
        assert spool.read_body(queue_id) == bodies[n]
    spool.close()


def test_commits_arriving_during_a_sync_form_the_next_batch(spool: Spool) -> None:
    async def main() -> None:
        first = asyncio.gather(*(store(spool, make_envelope(), b"a\r\n") for _ in range(10)))
        await asyncio.sleep(0)  # the first ten are queued; the committer starts next
        second = asyncio.gather(*(store(spool, make_envelope(), b"b\r\n") for _ in range(10)))
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert len(spool.list_ids()) == 20
    assert 2 <= spool.sync_count <= 4


@pytest.mark.parametrize("batch", [1, fsutil.PER_FILE_SYNC_MAX + 4])  # fsyncs, then syncfs
def test_a_failed_flush_acknowledges_nothing_and_leaves_nothing_queued(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    if batch > fsutil.PER_FILE_SYNC_MAX and not fsutil.HAVE_SYNCFS:
        pytest.skip("no syncfs here")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "write-back failed")

    monkeypatch.setattr(os, "fsync", broken)
    monkeypatch.setattr(fsutil, "_raw_syncfs", broken)

    async def main() -> list[object]:
        stores = (store(spool, make_envelope(), b"x\r\n") for _ in range(batch))
        return await asyncio.gather(*stores, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, OSError) and o.errno == errno.EIO for o in outcomes)
    assert spool.list_ids() == []
    assert os.listdir(spool.root / "incoming") == []
    monkeypatch.undo()
    queue_id = asyncio.run(store(spool, make_envelope(), b"later\r\n"))
    assert spool.list_ids() == [queue_id]


def test_one_bad_writer_does_not_fail_its_batch(spool: Spool) -> None:
    good = spool.begin(make_envelope())
    good.write(b"good\r\n")
    bad = spool.begin(make_envelope())
    bad.abort()

    async def main() -> tuple[BaseException | None, BaseException | None]:
        return await asyncio.gather(spool.commit(good), spool.commit(bad), return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] is None
    assert isinstance(results[1], ValueError)
    assert spool.list_ids() == [good.queue_id]
    assert os.listdir(spool.root / "incoming") == []


def test_abort_during_commit_does_not_pull_the_file_away(spool: Spool) -> None:
    writer = spool.begin(make_envelope())
    writer.write(b"body\r\n")

    async def main() -> None:
        commit = asyncio.ensure_future(spool.commit(writer))
        await asyncio.sleep(0)
        writer.abort()  # the client disconnected while we were syncing
        await commit

    asyncio.run(main())
    assert spool.read_body(writer.queue_id) == b"body\r\n"
    with pytest.raises(ValueError):
        asyncio.run(spool.commit(writer))
    with pytest.raises(ValueError):
        writer.write(b"late")


def test_abort_removes_the_unfinished_file(spool: Spool) -> None:
    writer = spool.begin(make_envelope())
    writer.write(b"x" * 300_000)  # past the in-memory buffer: the file has data
    assert os.listdir(spool.root / "incoming") == [writer.queue_id]
    writer.abort()
    writer.abort()
    assert os.listdir(spool.root / "incoming") == []
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_an_id_already_committed_fails_the_commit_and_keeps_the_first(spool: Spool) -> None:
    """Another process sharing the spool may have used the id: refuse, never overwrite."""
    first = make_envelope()
    taken = asyncio.run(store(spool, first, b"one\r\n"))
    again = make_envelope()
    again.queue_id = taken
    writer = spool.begin(again)
    writer.write(b"two\r\n")
    with pytest.raises(FileExistsError):
        asyncio.run(spool.commit(writer))
    big = spool.begin(again)
    with pytest.raises(FileExistsError):
        big.write(b"x" * 300_000)  # past the buffer: the clash shows at the file's creation
    big.abort()
    assert spool.read_body(taken) == b"one\r\n"
    assert os.listdir(spool.root / "incoming") == []


def test_an_id_claimed_meanwhile_fails_the_commit_instead_of_overwriting(spool: Spool) -> None:
    """Two writers that chose one id before either made its file: the second one loses."""
    first, second = make_envelope(), make_envelope()
    second.queue_id = first.queue_id
    winner, loser = spool.begin(first), spool.begin(second)
    winner.write(b"mine\r\n")
    loser.write(b"theirs\r\n")
    asyncio.run(spool.commit(winner))
    with pytest.raises(FileExistsError):
        asyncio.run(spool.commit(loser))
    assert spool.read_body(first.queue_id) == b"mine\r\n"
    assert os.listdir(spool.root / "incoming") == []


def test_a_small_message_makes_no_file_before_commit(spool: Spool) -> None:
    writer = spool.begin(make_envelope())
    writer.write(b"Subject: small\r\n\r\nbody\r\n")
    assert os.listdir(spool.root / "incoming") == []
    writer.abort()
    assert os.listdir(spool.root / "incoming") == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_buffered_and_spilled_writes_store_the_same_bytes(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(spool_module, "_BUFFER_LIMIT", 64)  # spill after a few chunks
        spool = Spool(Path(tmp) / "queue")
        spool.open()
        writer = spool.begin(make_envelope())
        for chunk in chunks:
            writer.write(chunk)
        assert writer.size == sum(map(len, chunks))
        asyncio.run(spool.commit(writer))
        spool = reopen(spool)
        assert [e.queue_id for e in spool.recover()] == [writer.queue_id]
        assert b"".join(spool.iter_body(writer.queue_id, chunk_size=7)) == b"".join(chunks)
        spool.close()


def test_large_body_streams_without_being_held_in_memory(spool: Spool) -> None:
    chunk = os.urandom(64 * 1024)
    count = 320  # 20 MiB
    writer = spool.begin(make_envelope())
    tracemalloc.start()
    try:
        for _ in range(count):
            writer.write(chunk)
        asyncio.run(spool.commit(writer))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
    assert writer.size == count * len(chunk)
    expected = zlib.crc32(chunk * count)
    crc = 0
    for part in spool.iter_body(writer.queue_id):
        crc = zlib.crc32(part, crc)
    assert crc == expected
    spool = reopen(spool)
    assert [e.queue_id for e in spool.recover()] == [writer.queue_id]
    spool.close()


# -- validation at recovery ---------------------------------------------------


def _committed_file(tmp_path: Path) -> tuple[str, bytes]:
    spool = Spool(tmp_path / "source")
    spool.open()
    queue_id = asyncio.run(store(spool, make_envelope(), b"Subject: t\r\n\r\nshort body\r\n"))
    spool.close()
    return queue_id, (spool.root / "active" / queue_id).read_bytes()


def _recover_with(root: Path, queue_id: str, data: bytes) -> list[Envelope]:
    spool = Spool(root)
    spool.open()
    (root / "active" / queue_id).write_bytes(data)
    try:
        return spool.recover()
    finally:
        spool.close()


def test_a_truncated_file_is_never_accepted(tmp_path: Path) -> None:
    queue_id, data = _committed_file(tmp_path)
    assert len(_recover_with(tmp_path / "whole", queue_id, data)) == 1
    for length in range(len(data)):
        root = tmp_path / f"cut{length}"
        assert _recover_with(root, queue_id, data[:length]) == []
        assert os.listdir(root / "active") == []
        assert os.listdir(root / "corrupt") == [queue_id]


def test_a_damaged_byte_anywhere_is_never_accepted(tmp_path: Path) -> None:
    queue_id, data = _committed_file(tmp_path)
    root = tmp_path / "damaged"
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        assert _recover_with(root, queue_id, bytes(damaged)) == []
    assert len(os.listdir(root / "corrupt")) == len(data)


def test_strangers_in_active_are_quarantined(tmp_path: Path) -> None:
    queue_id, data = _committed_file(tmp_path)
    spool = Spool(tmp_path / "queue")
    spool.open()
    active = spool.root / "active"
    (active / "README").write_bytes(data)
    (active / new_queue_id()).write_bytes(data)  # valid file under the wrong name
    target = tmp_path / "elsewhere"
    target.write_bytes(data)
    (active / queue_id).symlink_to(target)
    assert spool.recover() == []
    assert os.listdir(active) == []
    assert len(os.listdir(spool.root / "corrupt")) == 3
    assert target.read_bytes() == data
    spool.close()


def test_recovery_discards_incoming_leftovers(spool: Spool) -> None:
    kept = asyncio.run(store(spool, make_envelope(), b"kept\r\n"))
    unfinished = spool.begin(make_envelope())
    unfinished.write(b"never committed\r\n" * 30_000)
    (spool.root / "incoming" / "junk").write_bytes(b"junk")
    spool = reopen(spool)  # as if the process had died mid-message
    assert [e.queue_id for e in spool.recover()] == [kept]
    assert os.listdir(spool.root / "incoming") == []
    unfinished.abort()
    spool.close()


def test_iter_body_reports_damage_at_the_end(spool: Spool) -> None:
    queue_id = asyncio.run(store(spool, make_envelope(), b"A" * 5000))
    path = spool.root / "active" / queue_id
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(data)
    with pytest.raises(CorruptMessageError):
        for _ in spool.iter_body(queue_id, chunk_size=1000):
            pass


# -- delivery state ------------------------------------------------------------


def test_state_is_saved_applied_and_finished(spool: Spool) -> None:
    envelope = make_envelope()
    queue_id = asyncio.run(store(spool, envelope, b"x\r\n"))
    envelope.recipients[0].state = DELIVERED
    envelope.recipients[1].state = DEFERRED
    envelope.recipients[1].attempts = 2
    envelope.recipients[1].next_attempt = 1234.5
    envelope.recipients[1].last_error = "451 4.3.0 try later"
    envelope.hold = True
    spool.save_state(envelope)
    assert os.listdir(spool.root / "state") == [queue_id]
    assert spool.load(queue_id) == envelope
    assert not envelope.all_final

    spool = reopen(spool)
    [recovered] = spool.recover()
    assert recovered == envelope
    recovered.recipients[1].state = "failed"
    assert recovered.all_final
    spool.save_state(recovered)
    spool.finish(queue_id)
    assert spool.list_ids() == []
    assert os.listdir(spool.root / "state") == []
    spool.finish(queue_id)  # idempotent


def test_orphan_and_unusable_state_files(spool: Spool) -> None:
    envelope = make_envelope()
    queue_id = asyncio.run(store(spool, envelope, b"x\r\n"))
    state = spool.root / "state"
    (state / new_queue_id()).write_bytes(b"{}")  # message already gone
    (state / f".tmp-{queue_id}-1-1").write_bytes(b"half")  # crash mid-save
    (state / queue_id).write_bytes(b'{"hold":false,"recipients":[{"addr')  # torn write
    spool = reopen(spool)
    [recovered] = spool.recover()
    assert all(r.state == PENDING for r in recovered.recipients)  # retried, not lost
    assert os.listdir(state) == [queue_id]
    other = make_envelope()
    other.queue_id = queue_id
    spool.save_state(other)  # recipients that do not match the message
    assert spool.load(queue_id).recipients == envelope.recipients
    spool.close()


# -- kill -9 -------------------------------------------------------------------

BODY_SOURCE = """
def body(n):
    big = b"X" * 300_000 + b"\\r\\n" if n % 9 == 0 else b""  # some spill past the buffer
    return b"Subject: %d\\r\\n\\r\\n" % n + bytes(range(256)) * (n % 40) + big + b"\\r\\n"
"""

CHILD = (
    BODY_SOURCE
    + """
import asyncio, sys, time
from pathlib import Path
from petrel.queue import Envelope, Recipient, Spool, new_queue_id

async def one(spool, n):
    envelope = Envelope(new_queue_id(), f"n{n}@x.test", [Recipient("r@x.test")], time.time())
    writer = spool.begin(envelope)
    data = body(n)
    for i in range(0, len(data), 65536):
        writer.write(data[i : i + 65536])
    await spool.commit(writer)
    print(writer.queue_id, n, flush=True)

async def main():
    spool = Spool(Path(sys.argv[1]))
    spool.open()
    n = int(sys.argv[2])
    while True:
        await asyncio.gather(*(one(spool, n + i) for i in range(8)))
        n += 8

asyncio.run(main())
"""
)


def test_kill_9_never_loses_an_acknowledged_message(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(BODY_SOURCE, namespace)
    body = namespace["body"]
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "queue"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    acknowledged: dict[str, int] = {}
    rng = random.Random()
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, str(script), str(root), str(round_ * 1_000_000)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # running and committing
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait()
        assert child.returncode == -signal.SIGKILL
        # Only complete lines: the kill may cut the child's last print in half.
        for line in (first + rest).decode().split("\n")[:-1]:
            queue_id, number = line.split()
            acknowledged[queue_id] = int(number)

        spool = Spool(root)
        spool.open()
        recovered = {e.queue_id: e for e in spool.recover()}
        assert os.listdir(root / "corrupt") == []
        assert set(acknowledged) <= set(recovered)
        for queue_id, n in acknowledged.items():
            assert recovered[queue_id].sender == f"n{n}@x.test"
            assert spool.read_body(queue_id) == body(n)  # type: ignore[operator]
        for queue_id, envelope in recovered.items():  # unacknowledged but complete is fine
            n = int(envelope.sender[1:].split("@")[0])
            assert spool.read_body(queue_id) == body(n)  # type: ignore[operator]
        spool.close()
    assert len(acknowledged) > 8


def test_concurrent_syncfs_calls_share_rounds_and_each_waits_for_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group sync: fewer flushes than callers, and none released by a flush that began earlier."""
    import threading

    from petrel import fsutil

    if not fsutil.HAVE_SYNCFS:
        pytest.skip("no syncfs(2) here")
    starts: list[float] = []

    def slow_syncfs(fd: int) -> None:
        starts.append(time.monotonic())
        time.sleep(0.02)

    monkeypatch.setattr(fsutil, "_raw_syncfs", slow_syncfs)
    monkeypatch.setattr(fsutil, "_groups", {})
    fd = os.open(tmp_path, os.O_RDONLY)
    covered: list[bool] = []

    def caller() -> None:
        called_at = time.monotonic()
        fsutil.syncfs(fd)
        covered.append(any(called_at <= s for s in starts))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.close(fd)
    assert len(covered) == 20 and all(covered)
    assert len(starts) < 20
