"""The 8-bit → 7-bit MIME conversion, checked by decoding the result with the stdlib."""

from __future__ import annotations

import binascii
import email
import email.policy
from email.message import Message

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from petrel.delivery.mime7bit import ConversionError, to_7bit

STAMP = "by mx.petrel.test id 1K0TESTQUEUEID"


def _convert(message: bytes) -> bytes:
    return to_7bit(message, "mx.petrel.test", "1K0TESTQUEUEID")


def _parse(message: bytes) -> Message:
    return email.message_from_bytes(message, policy=email.policy.compat32)


def _leaves(message: bytes) -> list[Message]:
    return [part for part in _parse(message).walk() if not part.is_multipart()]


def _body(message: bytes) -> bytes:
    return message.partition(b"\r\n\r\n")[2]


def _assert_7bit(message: bytes) -> None:
    assert _body(message).isascii()
    assert max(len(line) for line in message.split(b"\r\n")) <= 998


def test_plain_8bit_body_becomes_quoted_printable_text() -> None:
    headers = (
        b"Received: from client.test\r\n\tby mx.petrel.test; Sun, 1 Jan 2023 00:00:00 +0000\r\n"
        b"Subject:no space after the colon\r\n"
        b"From: a@client.test\r\n"
    )
    text = "Grüße aus Köln, café au lait = 2 €\r\n.leading dot\r\n" + "ü" * 600 + "\r\n"
    original = headers + b"\r\n" + text.encode("utf-8")
    converted = _convert(original)
    _assert_7bit(converted)
    # The original fields are kept byte for byte; the MIME fields follow them.
    assert converted.startswith(headers)
    message = _parse(converted)
    assert message["MIME-Version"] == "1.0"
    assert message["Content-Type"] == "text/plain; charset=unknown-8bit"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message["X-MIME-Autoconverted"] == f"from 8bit to quoted-printable {STAMP}"
    assert message.get_payload(decode=True) == text.encode("utf-8")
    assert max(len(line) for line in _body(converted).split(b"\r\n")) <= 76  # RFC 2045


MULTIPART = (
    b"Subject: two attachments\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_outer"\r\n'
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"This is a multi-part message in MIME format.\r\n"
    b"--=_outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"H\xc3\xa9llo w\xc3\xb6rld\r\n"
    b"-- \r\n"
    b"sig\r\n"
    b"--=_outer\r\n"
    b"Content-Type: application/octet-stream; name=blob.bin\r\n"
    b"\r\n"
    b"\x00\x01\x80\xff binary\xfe\r\n"
    b"--=_outer\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"plain ascii\r\n"
    b"--=_outer--\r\n"
    b"the epilogue\r\n"
)


def test_multipart_text_part_to_qp_and_binary_part_to_base64() -> None:
    converted = _convert(MULTIPART)
    _assert_7bit(converted)
    before, after = _leaves(MULTIPART), _leaves(converted)
    assert [p.get_content_type() for p in after] == [
        "text/plain",
        "application/octet-stream",
        "text/plain",
    ]
    text, blob, ascii_part = after
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text["X-MIME-Autoconverted"] == f"from 8bit to quoted-printable {STAMP}"
    assert blob["Content-Transfer-Encoding"] == "base64"
    assert blob["X-MIME-Autoconverted"] == f"from 8bit to base64 {STAMP}"
    assert "X-MIME-Autoconverted" not in ascii_part
    for old, new in zip(before, after, strict=True):
        assert new.get_payload(decode=True) == old.get_payload(decode=True)
    # What a reader shows, decoded in the declared charset.
    reader = email.message_from_bytes(converted, policy=email.policy.default)
    assert reader.get_payload()[0].get_content() == "Héllo wörld\r\n-- \r\nsig"
    # A composite may not be labelled with an encoding it no longer has.
    assert _parse(converted)["Content-Transfer-Encoding"] == "7bit"
    # The parts that needed nothing, the preamble, boundaries and epilogue are unchanged.
    assert converted.startswith(MULTIPART.split(b"Content-Transfer-Encoding: 8bit")[0])
    assert b"\r\n\r\nThis is a multi-part message in MIME format.\r\n--=_outer\r\n" in converted
    tail = b"--=_outer\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain ascii\r\n"
    assert converted.endswith(tail + b"--=_outer--\r\nthe epilogue\r\n")


def test_nested_message_rfc822_is_converted_inside() -> None:
    inner = b"Subject: forwarded\r\nFrom: c@client.test\r\n\r\nVorw\xc3\xa4rts: ein 8-bit Text\r\n"
    original = (
        b"Subject: fwd\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b1\r\n"
        b"\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"see attached\r\n"
        b"--b1\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + inner + b"--b1--\r\n"
    )
    converted = _convert(original)
    _assert_7bit(converted)
    attached = _parse(converted).get_payload()[1]
    assert attached.get_content_type() == "message/rfc822"
    assert attached["Content-Transfer-Encoding"] == "7bit"
    [message] = attached.get_payload()
    assert message["Subject"] == "forwarded"
    assert message["MIME-Version"] == "1.0"  # the attached message is MIME now too
    assert message["Content-Type"] == "text/plain; charset=unknown-8bit"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_payload(decode=True) == "Vorwärts: ein 8-bit Text".encode()


@pytest.mark.parametrize(
    "message",
    [
        b"Subject:x\r\nX-Empty:\r\n\r\nseven bit only\r\n",
        MULTIPART.replace(b"\xc3\xa9", b"e")
        .replace(b"\xc3\xb6", b"o")
        .replace(b"\x80\xff binary\xfe", b"binary"),
        # 8-bit header fields cannot be converted, and are left as they are.
        b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nseven bit body\r\n",
        b"Subject: no body at all\r\n",
    ],
)
def test_message_without_8bit_body_is_returned_as_is(message: bytes) -> None:
    assert _convert(message) is message


def test_a_body_without_the_empty_line_before_it_is_converted_too() -> None:
    # A line that is no header field ends the header section (parsers read on as body).
    converted = _convert(b"Subject: x\r\nno field here\r\ncaf\xc3\xa9\r\n")
    _assert_7bit(converted)
    assert _parse(converted).get_payload(decode=True) == b"no field here\r\ncaf\xc3\xa9\r\n"


def test_8bit_part_headers_stay_but_the_content_is_converted() -> None:
    original = MULTIPART.replace(b"name=blob.bin", b'name="bl\xc3\xb6b.bin"')
    converted = _convert(original)
    assert b'name="bl\xc3\xb6b.bin"' in converted
    blob = _leaves(converted)[1]
    assert blob["Content-Transfer-Encoding"] == "base64"
    assert blob.get_payload(decode=True) == b"\x00\x01\x80\xff binary\xfe"


def test_a_soft_line_break_never_starts_a_boundary() -> None:
    # Quoted-printable would break this line so that the next one starts "--b1".
    line = b"\xc3\xa9" + b"x" * 69 + b"--b1 not a boundary"
    assert b"=\n--b1" in binascii.b2a_qp(line, istext=True)
    original = (
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b1\r\n"
        b"\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n" + line + b"\r\n"
        b"--b1--\r\n"
    )
    converted = _convert(original)
    _assert_7bit(converted)
    [part] = _leaves(converted)
    assert part["Content-Transfer-Encoding"] == "base64"
    assert part.get_payload(decode=True) == line


def test_too_deep_nesting_is_an_error_not_a_crash() -> None:
    depth = 1000
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    message = b"MIME-Version: 1.0\r\n" + opening + b"\r\ncaf\xc3\xa9\r\n" + closing
    with pytest.raises(ConversionError):
        _convert(message)


def _spool_lines(data: bytes) -> bytes:
    """Line ends as in the spool: CRLF only (bare CR or LF cannot come in by SMTP)."""
    return data.replace(b"\r", b"").replace(b"\n", b"\r\n")


@given(text=st.binary(max_size=3000), blob=st.binary(max_size=3000))
def test_any_content_comes_out_7bit_and_decodes_back(text: bytes, blob: bytes) -> None:
    text, blob = _spool_lines(text), _spool_lines(blob)
    assume(b"--=_b" not in text + blob)
    original = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
        b"--=_b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n"
        b"--=_b\r\nContent-Type: application/octet-stream\r\n\r\n" + blob + b"\r\n"
        b"--=_b--\r\n"
    )
    converted = _convert(original)
    _assert_7bit(converted)
    assert [p.get_payload(decode=True) for p in _leaves(converted)] == [text, blob]
