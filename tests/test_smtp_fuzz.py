"""Property tests for the sans-IO core: arbitrary bytes in any split never break it.

A ``ServerConnection`` driven by a well-behaved application must never raise, must only
ever produce well-formed reply lines, and must keep its buffer bounded whatever a peer
sends. The grammar helpers get round-trip and "only the documented error" properties.
"""

from __future__ import annotations

import base64
import contextlib
import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petrel.smtp import (
    NEED_DATA,
    PAUSED,
    Address,
    AddressError,
    AuthChallenge,
    AuthCredentials,
    AuthLookup,
    AuthOutcome,
    ConnectionClosed,
    Data,
    DataChunk,
    EndOfData,
    Event,
    Extensions,
    Mail,
    MessageRejected,
    Reply,
    ServerConnection,
    State,
    decode_xtext,
    encode_xtext,
    parse_path,
)
from petrel.smtp import replies as r
from petrel.smtp._params import ParameterError, parse_mail_params, parse_rcpt_params
from smtp_driver import HOST, PASSWORD, USER, answer

BUFFER_SLACK = 16 * 1024

REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -])[^\r\n]*\r\n")
TOO_MANY = r.too_many_errors(HOST).to_bytes()
CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def check_auth_event(conn: ServerConnection, event: Event, answer_reply: Reply) -> None:
    """The application answered an AUTH event; check what the core asked and allows."""
    if isinstance(event, AuthChallenge):
        assert event.reply.code == 334 and answer_reply is event.reply
    elif isinstance(event, AuthCredentials | AuthOutcome):
        assert event.mechanism in ("PLAIN", "LOGIN", "SCRAM-SHA-256") and event.authcid
        assert answer_reply.code in (235, 535)
    elif isinstance(event, AuthLookup):
        assert event.mechanism == "SCRAM-SHA-256" and answer_reply.code == 334


def parse_replies(out: bytes) -> list[tuple[int, int]]:
    """Split wire output into replies: (code, line count); asserts every line is well-formed."""
    replies: list[tuple[int, int]] = []
    pos = 0
    code: bytes | None = None
    count = 0
    while pos < len(out):
        match = REPLY_LINE.match(out, pos)
        assert match is not None, out[pos : pos + 80]
        # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; no control bytes.
        assert match.end() - pos <= 512
        assert not CONTROL.search(match[0][:-2])
        assert code is None or match[1] == code, "continuation with another code"
        code = match[1]
        count += 1
        if match[2] == b" ":
            replies.append((int(code), count))
            code, count = None, 0
        pos = match.end()
    assert code is None, "multi-line reply without its last line"
    return replies


def drive(conn: ServerConnection, piece: bytes, events: list[Event]) -> bytes:
    """Feed one piece and answer everything; checks the per-reply invariants."""
    conn.receive_data(piece)
    out = bytearray()
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            break
        if event is PAUSED:
            assert conn.state is State.CLOSED  # everything else was answered
            break
        assert isinstance(event, Event)
        events.append(event)
        if not event.needs_reply:
            assert isinstance(event, DataChunk | ConnectionClosed)
            continue
        was_authenticated = conn.authenticated
        answer_reply = answer(conn, event)  # AUTH: the driver's SASL answers (USER/PASSWORD)
        check_auth_event(conn, event, answer_reply)
        chunk = conn.send(answer_reply)
        # Only a 235 to a finished exchange logs the client in; a reply never logs it out.
        if conn.authenticated and not was_authenticated:
            assert isinstance(event, AuthCredentials | AuthOutcome) and answer_reply.code == 235
        assert conn.authenticated or not was_authenticated
        replies = parse_replies(chunk)
        # One reply per event, or that reply followed by the error-limit 421.
        assert len(replies) == 1 or (len(replies) == 2 and chunk.endswith(TOO_MANY))
        out += chunk
        if conn.state is State.TLS:
            conn.tls_established()
    return bytes(out)


TOKENS = [
    b"EHLO x.example\r\n",
    b"HELO x.example\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<a@b> SIZE=10 BODY=BINARYMIME\r\n",
    b"MAIL FROM:<\xc3\xa9@x> SMTPUTF8\r\n",
    b"MAIL From:user@x\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<c@example.net>\r\n",
    b"RCPT TO:<c@d> NOTIFY=NEVER ORCPT=rfc822;x+2By\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"DATA\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"BDAT 3\r\n",
    b"BDAT 2 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN dXNlcg==\r\n",
    b"AUTH LOGIN =\r\n",
    b"AUTH PLAIN " + _b64(f"\0{USER}\0{PASSWORD}") + b"\r\n",
    b"AUTH PLAIN " + _b64(f"\0{USER}\0wrong") + b"\r\n",
    b"AUTH SCRAM-SHA-256 " + _b64(f"n,,n={USER},r=abcdef") + b"\r\n",
    b"AUTH SCRAM-SHA-256\r\n",
    _b64(f"n,,n={USER},r=abcdef") + b"\r\n",
    _b64("c=biws,r=abcdefXYZ,p=" + "A" * 44) + b"\r\n",
    b"dXNlcg==\r\n",
    _b64(PASSWORD) + b"\r\n",
    b"=\r\n",
    b"!!!\r\n",
    b"*\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"EXPN x\r\n",
    b"HELP\r\n",
    b"HELP MAIL\r\n",
    b"ETRN #x\r\n",
    b"VERB\r\n",
    b"\x00",
    b"\xff\xfe",
    # Bare LFs: line ends in normalize mode, never an end of DATA.
    b"\n",
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"DATA\n",
    b"RCPT TO:<c@example.net>\n",
    b"Subject: hello\r\n",
    b"A" * 600,
    b"B" * 1100,
    b"C" * 13000,
    b"MAIL FROM:" + b"a" * 1500 + b"\r\n",
    b"MAIL FROM:<a@b> X=\x01\x02" + b"b" * 1500 + b"\r\n",
    b"RCPT TO:<c@d> " + b"K" * 1900 + b"=1\r\n",
    b"HELP \x1b[31m" + b"h" * 490 + b"\r\n",
]

# Sessions start somewhere interesting, so that random input reaches every state.
_TXN = b"EHLO x.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.net>\r\n"
PREFIXES = [
    b"",
    b"EHLO x.example\r\n",
    b"EHLO x.example\r\nMAIL FROM:<a@example.org>\r\n",
    _TXN,
    _TXN + b"DATA\r\n",
    _TXN + b"DATA\r\nSubject: x\r\n\r\n",
    _TXN + b"BDAT 20\r\n",
    _TXN + b"BDAT 3\r\nabc",
    b"EHLO x.example\r\nAUTH LOGIN\r\n",
    b"EHLO x.example\r\nAUTH PLAIN\r\n",
    b"EHLO x.example\r\nAUTH SCRAM-SHA-256 " + _b64(f"n,,n={USER},r=abcdef") + b"\r\n",
    b"EHLO x.example\r\nSTARTTLS\r\n",
]

CONFIGS = [
    {"max_errors": 1000},
    {
        "max_errors": 1000,
        "extensions": Extensions(size=50, starttls=True, auth=("PLAIN", "LOGIN", "SCRAM-SHA-256")),
    },
    {"max_errors": 1000, "strict_paths": True, "max_recipients": 1},
    {"max_errors": 3},
    {"max_errors": 1000, "extensions": Extensions(chunking=False, dsn=False, size=None)},
    {"max_errors": 1000, "normalize_bare_lf": True},
    {"max_errors": 1000, "normalize_bare_lf": True, "extensions": Extensions(size=50)},
]

_token = st.sampled_from(TOKENS)
streams = st.tuples(
    st.sampled_from(PREFIXES),
    st.lists(st.one_of(_token, _token, _token, st.binary(max_size=24)), max_size=40),
    st.sampled_from([b"", b"", b"QUIT\r\n", b"\r\n.\r\nQUIT\r\n"]),
).map(lambda parts: parts[0] + b"".join(parts[1]) + parts[2])


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    stream=streams,
    config=st.sampled_from(CONFIGS),
    eof=st.booleans(),
    data=st.data(),
)
def test_any_bytes_any_split(stream: bytes, config: dict, eof: bool, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    conn = ServerConnection(HOST, **config)
    out = bytearray(conn.send(r.greeting(HOST, "now")))
    events: list[Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        piece = stream[start:end]
        if not piece:
            continue
        out += drive(conn, piece, events)
        assert len(conn._buf) <= BUFFER_SLACK + len(piece)
    if eof:
        out += drive(conn, b"", events)
        assert conn.state is State.CLOSED
        assert conn.next_event() is PAUSED
    parse_replies(bytes(out))
    assert len(conn._buf) <= BUFFER_SLACK + len(stream)
    # Whatever was smuggled in, a DATA message is text until exactly one end: no command
    # event can appear between the 354 and the verdict.
    in_data = False
    for event in events:
        if in_data:
            assert isinstance(event, DataChunk | EndOfData | MessageRejected | ConnectionClosed)
            in_data = isinstance(event, DataChunk)
        else:
            in_data = isinstance(event, Data)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 200_000), piece=st.integers(1, 9000))
def test_endless_line_is_bounded(size: int, piece: int) -> None:
    conn = ServerConnection(HOST)
    conn.send(r.greeting(HOST, "now"))
    events: list[Event] = []
    drive(conn, b"EHLO x\r\n", events)
    blob = b"x" * size
    for i in range(0, size, piece):
        drive(conn, blob[i : i + piece], events)
        assert len(conn._buf) <= 12288 + piece
    out = drive(conn, b"\r\n", events)
    expected = r.LINE_TOO_LONG.to_bytes() if size > 510 else r.UNRECOGNIZED.to_bytes()
    assert out == expected


# -- grammar properties -------------------------------------------------------------------

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=12)
dot_atoms = st.lists(atoms, min_size=1, max_size=4).map(".".join)
labels = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=5).map(".".join)


@settings(max_examples=300)
@given(local=dot_atoms, domain=domains)
def test_parse_path_round_trip(local: str, domain: str) -> None:
    address = parse_path(f"<{local}@{domain}>")
    assert address == Address(local, domain)
    assert str(address) == f"{local}@{domain}"
    assert address.mailbox == local and not address.is_quoted


@settings(max_examples=100)
@given(local=dot_atoms, domain=domains, route=st.lists(domains, min_size=1, max_size=3))
def test_parse_path_drops_any_source_route(local: str, domain: str, route: list[str]) -> None:
    adl = ",".join("@" + hop for hop in route)
    text = f"<{adl}:{local}@{domain}>"
    if len(text) <= 256:
        assert parse_path(text) == Address(local, domain)


@settings(max_examples=100)
@given(local=dot_atoms, domain=domains)
def test_mail_over_the_wire_round_trip(local: str, domain: str) -> None:
    conn = ServerConnection(HOST)
    conn.send(r.greeting(HOST, "now"))
    events: list[Event] = []
    out = drive(conn, f"EHLO x\r\nMAIL FROM:<{local}@{domain}>\r\n".encode(), events)
    assert out.endswith(r.sender_ok(f"{local}@{domain}").to_bytes())
    assert events[-1] == Mail(Address(local, domain), events[-1].params)  # type: ignore[attr-defined]


@settings(max_examples=300)
@given(text=st.text(max_size=80))
def test_parse_path_raises_only_address_error(text: str) -> None:
    for candidate in (text, f"<{text}>", f"<{text}@x>"):
        with contextlib.suppress(AddressError):
            parse_path(candidate)


@settings(max_examples=300)
@given(value=st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_xtext_round_trip(value: str) -> None:
    encoded = encode_xtext(value)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert decode_xtext(encoded) == value


@settings(max_examples=300)
@given(value=st.text(max_size=40))
def test_decode_xtext_raises_only_value_error(value: str) -> None:
    try:
        decoded = decode_xtext(value)
    except ValueError:
        return
    assert len(decoded) <= len(value)


PARAM_WORDS = st.sampled_from(
    ["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "BY", "NOTIFY", "ORCPT", "X", "size"]
)
PARAM_VALUES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            "1",
            "-1",
            "8BITMIME",
            "FULL",
            "<>",
            "a+2B",
            "+zz",
            "60;R",
            "0;R",
            "NEVER",
            "SUCCESS,DELAY",
            "rfc822;a@b",
            "utf-8;é",
            "=",
            ";",
        ]
    ),
    st.text(max_size=12),
)
PARAM_TEXT = st.lists(
    st.tuples(PARAM_WORDS, PARAM_VALUES).map(lambda kv: kv[0] if kv[1] is None else "=".join(kv)),
    max_size=5,
).map(" ".join)


@settings(max_examples=300)
@given(
    text=st.one_of(PARAM_TEXT, st.text(max_size=60)),
    esmtp=st.booleans(),
    ext=st.sampled_from(
        [
            Extensions(),
            Extensions(auth=("PLAIN",), size=0),
            Extensions(size=None, dsn=False, deliverby=None, smtputf8=False, eightbitmime=False),
        ]
    ),
)
def test_parameter_parsers_raise_only_parameter_error(
    text: str, esmtp: bool, ext: Extensions
) -> None:
    for parse in (parse_mail_params, parse_rcpt_params):
        try:
            parse(text, ext, esmtp=esmtp)
        except ParameterError as exc:
            assert exc.reply.code in (501, 552, 553, 555)
