"""A small sans-IO driver shared by the unit tests of ``petrel.smtp``.

``Client`` feeds bytes to a ``ServerConnection`` and answers every event with the simple
policy of ``answer``; tests override the answer per event type. Imported by the test
modules as ``from smtp_driver import ...`` (``tests/`` is on ``sys.path`` because
``tests/conftest.py`` lives there).
"""

from __future__ import annotations

from collections.abc import Callable

from petrel.policy.users import scram_secret
from petrel.smtp import (
    NEED_DATA,
    PAUSED,
    AuthChallenge,
    AuthCredentials,
    AuthLookup,
    AuthOutcome,
    BadCommand,
    ChunkReceived,
    ClientConnection,
    Data,
    DataChunk,
    Ehlo,
    EndOfData,
    Event,
    Helo,
    Help,
    Mail,
    MessageRejected,
    Quit,
    Rcpt,
    Reply,
    ServerConnection,
    ServerReply,
    StartTls,
    State,
    help_reply,
    reply,
)
from petrel.smtp import replies as r

HOST = "mx.example.test"
DATE = "Thu, 27 Mar 2008 23:14:59 -0700"

# The one account the simple policy knows (PLAIN/LOGIN password, SCRAM keys): the
# seed session's willie/funsmtp.
USER = "willie"
PASSWORD = "funsmtp"
SCRAM = scram_secret(PASSWORD, b"fixed test salt!", 4096)

Policy = Callable[[Event], Reply]


def answer(
    conn: ServerConnection,
    event: Event,
    *,
    policy: dict[type[Event], Policy] | None = None,
    host: str = HOST,
    hello: Callable[[str], str] | None = None,
    queue_id: str = "Q",
) -> Reply:
    """The simple policy: what a well-behaved application answers to each event.

    EHLO → ``conn.ehlo_reply``, HELO → the same first line as a single reply (``hello``
    makes that line from the client's domain; plain ``"<host> Hello"`` without it), MAIL →
    sender ok, RCPT → recipient ok, DATA → 354, end of message → accepted, BDAT chunk →
    octets received, core-made errors → their own reply, QUIT → 221, STARTTLS → 220,
    HELP → ``help_reply``, AUTH challenges → the 334 the core built, PLAIN/LOGIN
    credentials → 235 for ``USER``/``PASSWORD`` else 535, SCRAM lookups → the challenge
    from the fixed ``SCRAM`` keys (whoever asks), SCRAM outcomes → 235 or 535, the rest →
    OK. ``policy`` overrides the answer per event type.
    """
    override = (policy or {}).get(type(event))
    if override is not None:
        return override(event)
    match event:
        case Ehlo(domain):
            return conn.ehlo_reply(hello(domain) if hello else f"{host} Hello")
        case Helo(domain):
            return reply(250, None, hello(domain) if hello else f"{host} Hello")
        case Mail(sender):
            return r.sender_ok(str(sender) if sender is not None else "")
        case Rcpt(recipient):
            return r.recipient_ok(str(recipient))
        case Data():
            return r.START_DATA
        case EndOfData():
            return r.message_accepted(queue_id)
        case ChunkReceived(size):
            return r.chunk_received(size)
        case BadCommand(error) | MessageRejected(error):
            return error
        case Quit():
            return r.closing(host)
        case StartTls():
            return r.READY_FOR_TLS
        case Help(topic):
            return help_reply(topic)
        case AuthChallenge(_, challenge):
            return challenge
        case AuthCredentials(_, _, authcid, password):
            ok = (authcid, password) == (USER, PASSWORD)
            return r.AUTH_OK if ok else r.AUTH_FAILED
        case AuthLookup():
            return conn.scram_challenge(
                SCRAM.salt, SCRAM.iterations, SCRAM.stored_key, SCRAM.server_key
            )
        case AuthOutcome(success=success):
            return r.AUTH_OK if success else r.AUTH_FAILED
    return r.OK


class Client:
    """Feeds bytes to a ServerConnection and answers every event with ``answer``.

    EHLO and HELO get the classic ``<host> Hello <domain> [<ip>], pleased to meet you``
    line; ``policy`` overrides the answer per event type.
    """

    def __init__(
        self,
        *,
        host: str = HOST,
        ip: str = "192.0.2.1",
        queue_id: str = "Q",
        policy: dict[type[Event], Policy] | None = None,
        **kwargs: object,
    ) -> None:
        self.host = host
        self.ip = ip
        self.queue_id = queue_id
        self.policy = policy or {}
        self.conn = ServerConnection(host, **kwargs)  # type: ignore[arg-type]
        self.greeting = self.conn.send(r.greeting(host, DATE))
        self.events: list[Event] = []
        self.out = b""

    def hello(self, domain: str) -> str:
        return f"{self.host} Hello {domain} [{self.ip}], pleased to meet you"

    def answer(self, event: Event) -> Reply:
        return answer(
            self.conn,
            event,
            policy=self.policy,
            host=self.host,
            hello=self.hello,
            queue_id=self.queue_id,
        )

    def send(self, data: bytes) -> bytes:
        """Feed ``data`` (nothing when empty), answer every event; return the reply bytes."""
        if data:
            self.conn.receive_data(data)
        return self.pump()

    def eof(self) -> bytes:
        self.conn.receive_data(b"")
        return self.pump()

    def pump(self) -> bytes:
        out = bytearray()
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            assert isinstance(event, Event)
            self.events.append(event)
            if event.needs_reply:
                out += self.conn.send(self.answer(event))
        self.out += out
        return bytes(out)

    def lines(self, *commands: str) -> list[str]:
        """Send each command (CRLF added) in its own read; return the reply lines."""
        out = b"".join(self.send(c.encode() + b"\r\n") for c in commands)
        return reply_lines(out)

    def replies(self, data: bytes) -> list[str]:
        """Send raw ``data`` in one read; return the reply lines."""
        return reply_lines(self.send(data))

    def last(self, command: str) -> str:
        """The last reply line to one command."""
        return self.lines(command)[-1]

    def of(self, *kinds: type[Event]) -> list[Event]:
        """The events of the given types, in order."""
        return [e for e in self.events if isinstance(e, kinds)]

    @property
    def data(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, DataChunk))

    @property
    def ends(self) -> list[Event]:
        """The verdicts on messages: every ``EndOfData`` and ``MessageRejected``."""
        return [e for e in self.events if isinstance(e, EndOfData | MessageRejected)]


def reply_lines(out: bytes) -> list[str]:
    text = out.decode("utf-8")
    assert text == "" or text.endswith("\r\n")
    return text.split("\r\n")[:-1]


def ready(**kwargs: object) -> Client:
    """A client that said EHLO and got a 250."""
    client = Client(**kwargs)
    assert client.last("EHLO client.example")[:4] == "250 "
    return client


def in_rcpt(**kwargs: object) -> Client:
    """A ready client with one sender and one accepted recipient."""
    client = ready(**kwargs)
    client.lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    assert client.conn.state is State.RCPT
    return client


def client_replies(conn: ClientConnection, data: bytes) -> list[ServerReply]:
    """Feed ``data`` to a client connection and take every reply it completes."""
    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, ServerReply)
        out.append(event)
    return out
