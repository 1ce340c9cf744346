"""MIME output conversion: 8-bit message bodies re-encoded as 7-bit MIME (RFC 6152 §3).

A client must not send 8-bit text to a server that did not offer 8BITMIME. Like
Sendmail and Postfix we convert instead of bouncing: every leaf part with 8-bit content
is re-encoded, text as quoted-printable (still readable as it is) and anything else as
base64, and labelled ``X-MIME-Autoconverted`` as Sendmail does. Header sections cannot
be converted without guessing a charset, so 8-bit bytes in them stay, as in Postfix.
What is not converted is written back as it came: header fields byte for byte, the
boundaries, preambles and epilogues through the stdlib generator.
"""

from __future__ import annotations

import base64
import binascii
import io
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32

__all__ = ["ConversionError", "to_7bit"]

_CTE = "Content-Transfer-Encoding"


class _SourceValue(str):
    """A parsed header value that keeps its source lines, to be written back unchanged."""

    source: str


class _Verbatim(Compat32):
    """compat32 that writes header fields nobody replaced exactly as they were read.

    Plain compat32 respells some (``Name:value`` becomes ``Name: value``); fields we add
    or replace are plain strings and are written the compat32 way, unfolded.
    """

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        kept = _SourceValue(value)
        kept.source = "".join(sourcelines)
        return name, kept

    def fold_binary(self, name: str, value: str) -> bytes:
        if isinstance(value, _SourceValue):
            return value.source.encode("ascii", "surrogateescape")
        return super().fold_binary(name, value)


_POLICY = _Verbatim(linesep="\r\n")


class ConversionError(ValueError):
    """The message cannot be converted (its MIME structure is nested too deeply)."""


def to_7bit(message: bytes, hostname: str, queue_id: str) -> bytes:
    """``message`` (CRLF line ends) with its 8-bit body parts encoded as 7-bit MIME.

    Returns ``message`` itself when its body has no byte >= 0x80, so callers can tell
    with ``is`` that nothing was converted.
    """
    if message.isascii():
        return message
    try:
        root = BytesParser(policy=_POLICY).parsebytes(message)
        if not _convert_message(root, f"by {hostname} id {queue_id}", ()):
            return message  # the 8-bit bytes are all in header sections or preambles
        out = io.BytesIO()
        BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(root)
    except RecursionError:  # the stdlib parser and generator recurse per nesting level
        raise ConversionError("MIME nesting too deep") from None
    return out.getvalue()


def _eight_bit(part: Message) -> bool:
    """Whether a leaf's content, as it stands in the message, has bytes >= 0x80."""
    # The parser keeps 8-bit bytes as surrogate escapes and get_payload() returns them
    # decoded in the part's charset (errors replaced): either way not ASCII.
    payload = part.get_payload()
    return isinstance(payload, str) and not payload.isascii()


def _convert_message(message: Message, stamp: str, boundaries: tuple[bytes, ...]) -> bool:
    """Convert a message (the top level or an attached one); True if it had 8-bit parts.

    ``boundaries`` are those of the enclosing multiparts, which no encoded line may
    start with.
    """
    if not any(_eight_bit(part) for part in message.walk()):
        return False
    if "MIME-Version" not in message:
        message["MIME-Version"] = "1.0"  # the fields we add are MIME
    _convert_entity(message, stamp, boundaries)
    return True


def _convert_entity(part: Message, stamp: str, boundaries: tuple[bytes, ...]) -> None:
    if not part.is_multipart():
        if _eight_bit(part):
            _encode(part, stamp, boundaries)
        return
    boundary = part.get_boundary()
    if boundary is not None:
        boundaries = (*boundaries, b"--" + boundary.encode("ascii", "surrogateescape"))
    attached = part.get_content_maintype() == "message"
    for child in part.get_payload():
        assert isinstance(child, Message)  # a multipart's payload is a list of parts
        if attached:
            _convert_message(child, stamp, boundaries)
        else:
            _convert_entity(child, stamp, boundaries)
    # A composite may only be labelled 7bit, 8bit or binary (RFC 2045 §6.4); its
    # content is 7-bit now, as Postfix relabels it.
    if part.get(_CTE, "").strip().lower() in ("8bit", "binary"):
        part.replace_header(_CTE, "7bit")


def _encode(part: Message, stamp: str, boundaries: tuple[bytes, ...]) -> None:
    content = part.get_payload(decode=True)
    assert isinstance(content, bytes)  # decode=True on a leaf part gives bytes
    if "Content-Type" not in part:
        # The default, us-ascii, is wrong for 8-bit text of unknown charset (RFC 1428).
        part["Content-Type"] = "text/plain; charset=unknown-8bit"
    encoding, text = _encoded(part, content, boundaries)
    part.set_payload(text.decode("ascii"))
    if _CTE in part:
        part.replace_header(_CTE, encoding)
    else:
        part[_CTE] = encoding
    part["X-MIME-Autoconverted"] = f"from 8bit to {encoding} {stamp}"


def _encoded(part: Message, content: bytes, boundaries: tuple[bytes, ...]) -> tuple[str, bytes]:
    """Quoted-printable for text, which stays readable; base64 for anything else."""
    # A multipart the parser could not split (no boundary) is a leaf here; readers
    # show it as text, so it is encoded as text.
    if part.get_content_maintype() in ("text", "multipart"):
        text = binascii.b2a_qp(content, istext=True)
        # A soft line break can put a boundary at the start of a line, which would cut
        # the part short; base64 has no "-" at all.
        lines = b"\n" + text
        if not any(b"\n" + boundary in lines for boundary in boundaries):
            return "quoted-printable", text
    return "base64", base64.encodebytes(content)
