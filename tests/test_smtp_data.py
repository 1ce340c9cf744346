"""Message text framing in the sans-IO core: DATA (dot-stuffing, smuggling, limits) and BDAT."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petrel.smtp import (
    ChunkReceived,
    ConnectionClosed,
    Data,
    DataChunk,
    EndOfData,
    Extensions,
    LocalProtocolError,
    Mail,
    MessageRejected,
    Rcpt,
    State,
    reply,
)
from petrel.smtp import replies as r
from smtp_driver import Client, in_rcpt, reply_lines

BARE = "550 5.6.0 Message contains a bare CR or LF (lines must end in CRLF); rejected"
NUL = "550 5.6.0 Message contains a NUL character; rejected"
LONG = "500 5.5.2 Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6); rejected"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
ACCEPTED = "250 2.0.0 Q Message accepted for delivery"
START = '354 Enter mail, end with "." on a line by itself'


def in_data(**kwargs: object) -> Client:
    client = in_rcpt(**kwargs)
    assert client.replies(b"DATA\r\n") == [START]
    assert client.conn.state is State.DATA
    client.events.clear()
    client.out = b""
    return client


def stuff(lines: list[bytes]) -> bytes:
    """What a client puts on the wire for these text lines (RFC 5321 §4.5.2)."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


# -- DATA: dot-unstuffing and the end ---------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        pytest.param(b"hello\r\n", b"hello\r\n", id="plain"),
        pytest.param(b"..hidden\r\n", b".hidden\r\n", id="double-dot"),
        pytest.param(b"...\r\n", b"..\r\n", id="triple-dot"),
        pytest.param(b"..\r\n", b".\r\n", id="dot-line"),
        pytest.param(b".x\r\n", b"x\r\n", id="lone-leading-dot"),
        pytest.param(b"a\r\n..b\r\n.c\r\n", b"a\r\n.b\r\nc\r\n", id="middle-lines"),
        pytest.param(b"a.b\r\n a\r\n .\r\n", b"a.b\r\n a\r\n .\r\n", id="inner-dots-kept"),
        pytest.param(b"\r\n\r\n", b"\r\n\r\n", id="empty-lines"),
        pytest.param(b"x\r\n.\r\r\n", None, id="dot-cr-is-not-the-end"),
    ],
)
def test_dot_unstuffing(wire: bytes, text: bytes | None) -> None:
    client = in_data()
    out = client.replies(wire + b".\r\n")
    if text is None:
        assert out == [BARE]
    else:
        assert out == [ACCEPTED]
        assert client.data == text
        assert client.ends == [EndOfData(len(text))]
    assert client.conn.state is State.READY


def test_headers_blank_line_body() -> None:
    message = [b"From: a@example.org", b"To: b@example.net", b"Subject: hi", b"", b"Body", b"."]
    client = in_data()
    assert client.replies(stuff(message) + b".\r\n") == [ACCEPTED]
    assert client.data == b"".join(line + b"\r\n" for line in message)


def test_empty_message() -> None:
    client = in_data()
    assert client.replies(b".\r\n") == [ACCEPTED]
    assert client.events == [EndOfData(0)]


def test_whole_message_in_one_read_keeps_the_last_chunk() -> None:
    client = in_rcpt()
    out = client.send(b"DATA\r\nHello\r\n.\r\nNOOP\r\n")
    assert reply_lines(out) == [START, ACCEPTED, "250 2.0.0 OK"]
    assert client.data == b"Hello\r\n"
    assert client.of(EndOfData) == [EndOfData(7)]


MESSAGE = b"Subject: t\r\n\r\nline one\r\n..dot\r\n\r\n.\r\nNOOP\r\n"


@pytest.mark.parametrize("normalize", [False, True], ids=["reject", "normalize"])
@pytest.mark.parametrize("cut", range(len(MESSAGE) + 1))
def test_terminator_split_anywhere(cut: int, normalize: bool) -> None:
    client = in_data(normalize_bare_lf=normalize)
    client.send(MESSAGE[:cut])
    client.send(MESSAGE[cut:])
    assert reply_lines(client.out) == [ACCEPTED, "250 2.0.0 OK"]
    assert client.data == b"Subject: t\r\n\r\nline one\r\n.dot\r\n\r\n"
    assert client.ends == [EndOfData(len(client.data))]


def test_message_byte_by_byte() -> None:
    client = in_data()
    for i in range(len(MESSAGE)):
        client.send(MESSAGE[i : i + 1])
    assert reply_lines(client.out) == [ACCEPTED, "250 2.0.0 OK"]
    assert client.data == b"Subject: t\r\n\r\nline one\r\n.dot\r\n\r\n"


text_line = st.one_of(
    st.lists(
        st.sampled_from([b".", b"..", b"a", b" ", b"\t", b"\xc3\xa9", b"\xff", b"From: x", b"-"]),
        max_size=12,
    ).map(b"".join),
    st.builds(lambda n, c: c * n, st.integers(990, 998), st.sampled_from([b"a", b"."])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(text_line, max_size=30), data=st.data(), normalize=st.booleans())
def test_round_trip_property(lines: list[bytes], data: st.DataObject, normalize: bool) -> None:
    original = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(lines) + b".\r\nNOOP\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    client = in_data(normalize_bare_lf=normalize)
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        client.send(wire[start:end])
    assert client.data == original
    assert client.ends == [EndOfData(len(original))]
    assert reply_lines(client.out) == [ACCEPTED, "250 2.0.0 OK"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(text_line, max_size=30), data=st.data())
def test_normalize_round_trip_with_mixed_line_ends(lines: list[bytes], data: st.DataObject) -> None:
    """Stuffed lines ended by LF or CRLF at random come out as the same CRLF lines."""
    ends = data.draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines)))
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    wire = b"".join(map(bytes.__add__, stuffed, ends)) + b"\r\n.\r\nNOOP\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    client = in_data(normalize_bare_lf=True)
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        client.send(wire[start:end])
    original = b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    assert reply_lines(client.out) == [ACCEPTED, "250 2.0.0 OK"]
    assert client.data == original
    assert client.ends == [EndOfData(len(original))]


# -- SMTP smuggling ------------------------------------------------------------------------

SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nevil body\r\n"


@pytest.mark.parametrize(
    "sequence",
    [
        pytest.param(b"\n.\n", id="lf-dot-lf"),
        pytest.param(b"\n.\r\n", id="lf-dot-crlf"),
        pytest.param(b"\r.\r\n", id="cr-dot-crlf"),
        pytest.param(b"\r\n.\r", id="crlf-dot-cr"),
        pytest.param(b"\r\n.\n", id="crlf-dot-lf"),
        pytest.param(b"\r.\r", id="cr-dot-cr"),
        pytest.param(b"\n.\r", id="lf-dot-cr"),
    ],
)
@pytest.mark.parametrize("prefix", [b"Subject: s\r\n\r\nhello", b""], ids=["body", "at-start"])
@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.parametrize("mode", ["reject", "normalize"])
def test_smuggling_variants(sequence: bytes, prefix: bytes, split: str, mode: str) -> None:
    stream = prefix + sequence + SMUGGLED + b".\r\nQUIT\r\n"
    client = in_data(normalize_bare_lf=mode == "normalize")
    if split == "whole":
        client.send(stream)
    else:
        for i in range(len(stream)):
            client.send(stream[i : i + 1])
    assert not client.of(Mail) and not client.of(Rcpt) and not client.of(Data)
    bare_cr = b"\r" in sequence.replace(b"\r\n", b"")
    if mode == "reject" or bare_cr:
        assert reply_lines(client.out) == [BARE, "221 2.0.0 mx.example.test closing connection"]
        assert client.ends == [MessageRejected(r.BARE_NEWLINE_IN_DATA)]
        assert b"evil" not in client.data
    else:
        # Only CRLF "." CRLF ends the text: the "." line and the smuggled commands are
        # text of this one message, stored with CRLF and with the "." line kept.
        assert reply_lines(client.out) == [ACCEPTED, "221 2.0.0 mx.example.test closing connection"]
        expected = prefix + b"\r\n.\r\n" + SMUGGLED
        assert client.data == expected
        assert client.ends == [EndOfData(len(expected))]


def test_smuggled_terminator_then_real_end_then_next_transaction() -> None:
    client = in_data()
    client.send(b"hello\n.\nMAIL FROM:<evil@x>\r\n.\r\n")
    assert reply_lines(client.out) == [BARE]
    assert client.conn.state is State.READY
    out = client.replies(b"MAIL FROM:<good@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nok\r\n.\r\n")
    assert out == [
        "250 2.1.0 <good@x>... Sender ok",
        "250 2.1.5 <v@y>... Recipient ok",
        START,
        ACCEPTED,
    ]
    assert [str(m.sender) for m in client.of(Mail)] == ["good@x"]  # type: ignore[attr-defined]
    assert client.data.endswith(b"ok\r\n")


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"hello\n.\nMAIL FROM:<evil@x>\r\n.\r\n", id="lf-dot-lf"),
        pytest.param(b"hello\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n", id="lf-dot-crlf"),
        pytest.param(b"hello\r\n.\nMAIL FROM:<evil@x>\r\n.\r\n", id="crlf-dot-lf"),
    ],
)
def test_normalized_smuggling_stays_text_and_the_session_stays_in_sync(stream: bytes) -> None:
    client = in_data(normalize_bare_lf=True)
    assert client.replies(stream) == [ACCEPTED]
    assert client.data == b"hello\r\n.\r\nMAIL FROM:<evil@x>\r\n"
    assert client.conn.state is State.READY
    out = client.replies(b"MAIL FROM:<good@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nok\r\n.\r\n")
    assert out[-1] == ACCEPTED
    assert [str(m.sender) for m in client.of(Mail)] == ["good@x"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        pytest.param(b"a\nb\n", b"a\r\nb\r\n", id="lf-only"),
        pytest.param(b"a\r\nb\nc\r\n", b"a\r\nb\r\nc\r\n", id="mixed"),
        pytest.param(b"\n\n", b"\r\n\r\n", id="empty-lines"),
        pytest.param(b"a\n..b\n", b"a\r\n.b\r\n", id="stuffed-after-lf"),
        pytest.param(b"a\n..\n", b"a\r\n.\r\n", id="stuffed-dot-line-after-lf"),
        pytest.param(b"a\n.\nb\r\n", b"a\r\n.\r\nb\r\n", id="dot-line-kept"),
        pytest.param(b"a\n.x\n", b"a\r\nx\r\n", id="leading-dot-after-lf"),
        pytest.param(b"a\n" + b"b" * 998 + b"\n", b"a\r\n" + b"b" * 998 + b"\r\n", id="998"),
    ],
)
@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_normalize_stores_lf_lines_as_crlf(wire: bytes, text: bytes, split: str) -> None:
    client = in_data(normalize_bare_lf=True)
    stream = wire + b"end\r\n.\r\n"  # ".\n" or "\n.\r\n" would not end it
    if split == "whole":
        client.send(stream)
    else:
        for i in range(len(stream)):
            client.send(stream[i : i + 1])
    assert reply_lines(client.out) == [ACCEPTED]
    assert client.data == text + b"end\r\n"
    assert client.ends == [EndOfData(len(text) + 5)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"a\rb\n", BARE, id="bare-cr"),
        pytest.param(b"a\r\r\n", BARE, id="cr-crlf"),
        pytest.param(b"a\n\r\n", None, id="lf-crlf"),
        pytest.param(b"a\nb\0\n", NUL, id="nul"),
        pytest.param(b"a\n" + b"b" * 999 + b"\n", LONG, id="999"),
    ],
)
def test_normalize_still_refuses_bare_cr_nul_and_long_lines(
    body: bytes, expected: str | None
) -> None:
    client = in_data(normalize_bare_lf=True)
    assert client.replies(b"first\r\n" + body + b"more\r\n.\r\n") == [expected or ACCEPTED]
    assert client.conn.state is State.READY


def test_normalize_after_data_lf_a_dot_line_is_text() -> None:
    client = in_rcpt(normalize_bare_lf=True)
    assert client.replies(b"DATA\n") == [START]
    assert client.replies(b".\r\nMAIL FROM:<evil@x>\r\n.\r\n") == [ACCEPTED]
    assert client.data == b".\r\nMAIL FROM:<evil@x>\r\n"
    assert not client.of(Mail)[1:]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"a\0b\r\n", NUL, id="nul"),
        pytest.param(b"ok\r\n\0\r\n", NUL, id="nul-line"),
        pytest.param(b"a\rb\r\n", BARE, id="bare-cr"),
        pytest.param(b"a\nb\r\n", BARE, id="bare-lf"),
        pytest.param(b"a\r\r\n", BARE, id="cr-crlf"),
        pytest.param(b"\n\r\n", BARE, id="lf-crlf"),
    ],
)
def test_bad_bytes_in_data(body: bytes, expected: str) -> None:
    client = in_data()
    assert client.replies(b"first\r\n" + body + b"more\r\n.\r\n") == [expected]
    assert len(client.ends) == 1
    assert client.conn.state is State.READY


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        pytest.param(b"a" * 998, True, id="998"),
        pytest.param(b"a" * 999, False, id="999"),
        pytest.param(b"a" * 5000, False, id="5000"),
        pytest.param(b"." + b"a" * 998, True, id="stuffed-dot-998"),
        pytest.param(b".." + b"a" * 997, True, id="stuffed-dots-998"),
        pytest.param(b".." + b"a" * 998, False, id="stuffed-dot-999"),
    ],
)
@pytest.mark.parametrize("split", ["whole", "pieces", "deep"])
def test_text_line_length(line: bytes, ok: bool, split: str) -> None:
    client = in_data()
    # "deep": the line sits inside 55 KB of ordinary lines, all in one read.
    padding = (b"x" * 76 + b"\r\n") * 700 + b"y" * 997 + b"\r\n" if split == "deep" else b""
    before, after = padding + b"before\r\n", b"after\r\n" + padding
    wire = before + line + b"\r\n" + after + b".\r\n"
    if split != "pieces":
        client.send(wire)
    else:
        for i in range(0, len(wire), 100):
            client.send(wire[i : i + 100])
            assert len(client.conn._buf) < 1200
    if ok:
        assert reply_lines(client.out) == [ACCEPTED]
        unstuffed = line[1:] if line.startswith(b".") else line
        assert client.data == before + unstuffed + b"\r\n" + after
    else:
        assert reply_lines(client.out) == [LONG]
        assert client.ends == [MessageRejected(r.TEXT_LINE_TOO_LONG)]


def test_endless_line_in_data_uses_bounded_memory() -> None:
    client = in_data()
    for _ in range(200):
        client.send(b"z" * 1000)
        assert len(client.conn._buf) <= 1000 + 1000
    assert client.replies(b"\r\n.\r\n") == [LONG]


@pytest.mark.parametrize(("size", "ok"), [(99, True), (100, True), (101, False), (5000, False)])
def test_actual_size_limit(size: int, ok: bool) -> None:
    client = in_data(extensions=Extensions(size=100))
    body = b"x" * 8 + b"\r\n"
    body *= size // 10
    rest = size % 10
    if rest == 1:
        body = body[:-10] + b"x" * 9 + b"\r\n"
    elif rest:
        body += b"y" * (rest - 2) + b"\r\n"
    assert len(body) == size
    client.send(body + b".\r\n")
    if ok:
        assert reply_lines(client.out) == [ACCEPTED]
        assert client.data == body
    else:
        assert reply_lines(client.out) == [TOO_BIG]
        assert len(client.data) <= 100
        # Nothing is handed out after the verdict: it is the last event of the message.
        assert client.events[-1] == MessageRejected(r.MESSAGE_TOO_BIG)
    assert client.conn.state is State.READY


def test_huge_message_over_limit_then_next_transaction() -> None:
    client = in_data(extensions=Extensions(size=1000))
    for _ in range(100):
        client.send(b"0123456789" * 99 + b"\r\n")
        assert len(client.conn._buf) < 2000
    assert client.replies(b".\r\n") == [TOO_BIG]
    events = client.events
    first_bad = events.index(MessageRejected(r.MESSAGE_TOO_BIG))
    assert first_bad == len(events) - 1
    assert sum(len(e.data) for e in events if isinstance(e, DataChunk)) <= 1000
    out = client.replies(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nsmall\r\n.\r\n")
    assert out[-1] == ACCEPTED


def test_application_refuses_data_command() -> None:
    client = in_rcpt(policy={Data: lambda e: reply(451, "4.3.0", "Try later")})
    out = client.replies(b"DATA\r\nSubject: x\r\n.\r\n")
    assert out[0] == "451 4.3.0 Try later"
    assert client.conn.state is State.RCPT
    assert not client.of(DataChunk)


@pytest.mark.parametrize("code", [451, 554])
def test_application_refuses_message(code: int) -> None:
    client = in_data(policy={EndOfData: lambda e: reply(code, f"{code // 100}.0.0", "no")})
    assert client.replies(b"x\r\n.\r\n") == [f"{code} {code // 100}.0.0 no"]
    assert client.conn.state is State.READY
    assert client.replies(b"RCPT TO:<x@y>\r\n") == ["503 5.5.1 Need MAIL before RCPT"]


def test_end_of_message_needs_a_final_reply() -> None:
    client = in_data()
    client.conn.receive_data(b"x\r\n.\r\n")
    assert client.conn.next_event() == DataChunk(b"x\r\n")
    assert client.conn.next_event() == EndOfData(3)
    with pytest.raises(LocalProtocolError):
        client.conn.send(r.START_DATA)
    assert client.conn.state is State.DATA
    assert client.conn.send(r.message_accepted("Q")) == (ACCEPTED + "\r\n").encode()
    assert client.conn.state is State.READY


def test_eof_mid_data() -> None:
    client = in_data()
    client.send(b"partial line")
    client.eof()
    assert client.events[-1] == ConnectionClosed()
    assert not client.ends and client.conn.state is State.CLOSED


def test_eof_after_complete_lines_mid_data() -> None:
    client = in_data()
    client.conn.receive_data(b"one\r\ntwo\r\n")
    client.eof()
    assert client.data == b"one\r\ntwo\r\n"
    assert client.events[-1] == ConnectionClosed()


def test_two_messages_pipelined() -> None:
    client = in_rcpt()
    out = client.send(
        b"DATA\r\nfirst\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nsecond\r\n.\r\n"
    )
    assert [line[:3] for line in reply_lines(out)] == ["354", "250", "250", "250", "354", "250"]
    assert client.ends == [EndOfData(7), EndOfData(8)]
    assert client.data == b"first\r\nsecond\r\n"


# -- BDAT -----------------------------------------------------------------------------------


def test_bdat_last() -> None:
    client = in_rcpt()
    assert client.replies(b"BDAT 5 LAST\r\nHello") == [ACCEPTED]
    assert client.data == b"Hello"
    assert client.of(EndOfData) == [EndOfData(5)]
    assert client.conn.state is State.READY


def test_bdat_multiple_chunks() -> None:
    client = in_rcpt()
    assert client.replies(b"BDAT 6\r\nHello ") == ["250 2.0.0 6 octets received"]
    assert client.conn.state is State.CHUNKING
    assert client.replies(b"NOOP\r\n") == ["250 2.0.0 OK"]
    assert client.replies(b"bdat 6\r\nworld!") == ["250 2.0.0 12 octets received"]
    assert client.replies(b"BDAT 2 last\r\n\r\n") == [ACCEPTED]
    assert client.data == b"Hello world!\r\n"
    assert client.of(ChunkReceived) == [ChunkReceived(6), ChunkReceived(12)]
    assert client.of(EndOfData) == [EndOfData(14)]


def test_bdat_zero_last() -> None:
    client = in_rcpt()
    assert client.replies(b"BDAT 3\r\nabcBDAT 0 LAST\r\n") == [
        "250 2.0.0 3 octets received",
        ACCEPTED,
    ]
    assert client.of(EndOfData) == [EndOfData(3)]


def test_bdat_empty_message() -> None:
    client = in_rcpt()
    assert client.replies(b"BDAT 0 LAST\r\n") == [ACCEPTED]
    assert client.of(EndOfData) == [EndOfData(0)] and client.data == b""


@pytest.mark.parametrize("piece", [1, 2, 7])
def test_bdat_chunk_split_across_reads(piece: int) -> None:
    payload = b"Subject: split\r\n\r\nbody\r\n"
    stream = b"BDAT %d LAST\r\n" % len(payload) + payload + b"NOOP\r\n"
    client = in_rcpt()
    for i in range(0, len(stream), piece):
        client.send(stream[i : i + piece])
    assert client.data == payload
    assert reply_lines(client.out)[-2:] == [ACCEPTED, "250 2.0.0 OK"]


def test_bdat_binary_passes_untouched() -> None:
    payload = b"\x00\n\r.\r\n..\r\n\xff\xfe\r\n.\r\n\n"
    client = Client()
    client.send(b"EHLO c\r\nMAIL FROM:<x@y> BODY=BINARYMIME\r\nRCPT TO:<z@y>\r\n")
    assert client.replies(b"BDAT %d LAST\r\n" % len(payload) + payload) == [ACCEPTED]
    assert client.data == payload


def test_data_after_binarymime_is_refused() -> None:
    client = Client()
    client.send(b"EHLO c\r\nMAIL FROM:<x@y> BODY=BINARYMIME\r\nRCPT TO:<z@y>\r\n")
    assert client.replies(b"DATA\r\n") == ["503 5.5.1 BODY=BINARYMIME requires BDAT, not DATA"]
    assert client.conn.state is State.RCPT
    assert client.replies(b"BDAT 1 LAST\r\nx") == [ACCEPTED]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(b"", "503 5.5.1 Polite people say HELO first", id="before-helo"),
        pytest.param(b"EHLO c\r\n", "503 5.5.1 Need MAIL command", id="before-mail"),
        pytest.param(
            b"EHLO c\r\nMAIL FROM:<a@b>\r\n", "503 5.5.1 Need RCPT (recipient)", id="before-rcpt"
        ),
    ],
)
def test_refused_bdat_consumes_its_octets(setup: bytes, expected: str) -> None:
    client = Client()
    client.send(setup)
    client.events.clear()
    client.out = b""
    payload = b"MAIL FROM:<e@x>\r\n"
    out = client.replies(b"BDAT %d LAST\r\n" % len(payload) + payload + b"NOOP\r\n")
    assert out == [expected, "250 2.0.0 OK"]
    assert not client.of(Mail) and not client.of(DataChunk)


def test_refused_bdat_split_across_reads() -> None:
    client = Client()
    client.send(b"EHLO c\r\n")
    for piece in (b"BDAT 11\r\n", b"RCPT ", b"TO:<", b"x>", b"NOOP\r\n"):
        client.send(piece)
    assert reply_lines(client.out)[-2:] == ["503 5.5.1 Need MAIL command", "250 2.0.0 OK"]
    assert client.conn.state is State.READY and not client.of(Rcpt)


def test_bdat_without_chunking_consumes_octets() -> None:
    client = in_rcpt(extensions=Extensions(chunking=False))
    out = client.replies(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert out == ["502 5.5.1 Command not implemented", "250 2.0.0 OK"]
    assert client.conn.state is State.RCPT


@pytest.mark.parametrize(
    "arg",
    [b"", b" abc", b" -1", b" 5 FIRST", b" 5 LAST x", " ٥ LAST".encode(), " ５".encode()],
)
def test_bdat_syntax(arg: bytes) -> None:
    client = in_rcpt()
    assert client.replies(b"BDAT" + arg + b"\r\nNOOP\r\n") == [
        "501 5.5.4 Syntax: BDAT chunk-size [LAST]",
        "250 2.0.0 OK",
    ]


def test_bdat_over_size_limit_in_one_chunk() -> None:
    client = in_rcpt(extensions=Extensions(size=10))
    assert client.replies(b"BDAT 11 LAST\r\n" + b"x" * 11 + b"NOOP\r\n") == [
        TOO_BIG,
        "250 2.0.0 OK",
    ]
    assert not client.of(EndOfData) and len(client.data) <= 10
    assert client.conn.state is State.READY


def test_bdat_over_size_limit_across_chunks() -> None:
    client = in_rcpt(extensions=Extensions(size=10))
    assert client.replies(b"BDAT 6\r\nabcdef") == ["250 2.0.0 6 octets received"]
    assert client.replies(b"BDAT 6 LAST\r\nghijkl") == [TOO_BIG]
    assert client.data == b"abcdef"
    assert client.conn.state is State.READY
    out = client.replies(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3 LAST\r\nxyz")
    assert out[-1] == ACCEPTED


def test_commands_between_chunks() -> None:
    client = in_rcpt()
    client.replies(b"BDAT 2\r\nab")
    assert client.replies(b"DATA\r\n") == [
        "503 5.5.1 BDAT transfer in progress; only BDAT, RSET or QUIT"
    ]
    assert client.replies(b"MAIL FROM:<a@b>\r\n")[0].startswith("503 5.5.1 BDAT transfer")
    assert client.conn.state is State.CHUNKING
    assert client.replies(b"RSET\r\n") == ["250 2.0.0 OK"]
    assert client.conn.state is State.READY
    assert client.replies(b"RCPT TO:<x@y>\r\n") == ["503 5.5.1 Need MAIL before RCPT"]


def test_eof_mid_bdat() -> None:
    client = in_rcpt()
    client.send(b"BDAT 100 LAST\r\nonly a part")
    client.eof()
    assert client.events[-1] == ConnectionClosed()
    assert client.data == b"only a part" and client.conn.state is State.CLOSED
