"""Events: what the server side of the core has understood from the client's bytes.

Every event that is a *command* waits for exactly one reply from the application
(``ServerConnection.send``) before the next event is produced; that is what makes
pipelining safe. ``DataChunk`` is the only event that needs no reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._address import Address
from ._params import MailParams, RcptParams
from ._replies import Reply


class Event:
    """Base class of all events."""

    __slots__ = ()

    needs_reply: bool = True


@dataclass(frozen=True, slots=True)
class Helo(Event):
    domain: str


@dataclass(frozen=True, slots=True)
class Ehlo(Event):
    domain: str


@dataclass(frozen=True, slots=True)
class Mail(Event):
    sender: Address | None  # None is the null reverse-path <>
    params: MailParams


@dataclass(frozen=True, slots=True)
class Rcpt(Event):
    recipient: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Data(Event):
    """The DATA command; a 354 reply starts the message text."""


@dataclass(frozen=True, slots=True)
class DataChunk(Event):
    """Message bytes, already dot-unstuffed (DATA) or raw (BDAT); CRLF line ends kept."""

    data: bytes
    needs_reply = False


@dataclass(frozen=True, slots=True)
class EndOfData(Event):
    """The message is complete (``<CRLF>.<CRLF>`` or ``BDAT … LAST``); reply with its fate."""

    size: int


@dataclass(frozen=True, slots=True)
class ChunkReceived(Event):
    """A BDAT chunk without LAST has been read; reply 250 and wait for the next one."""

    size: int


@dataclass(frozen=True, slots=True)
class MessageRejected(Event):
    """The core refused the message text it just consumed; send ``reply``, drop the body."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Rset(Event):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Event):
    pass


@dataclass(frozen=True, slots=True)
class Quit(Event):
    pass


@dataclass(frozen=True, slots=True)
class Vrfy(Event):
    argument: str


@dataclass(frozen=True, slots=True)
class Expn(Event):
    argument: str


@dataclass(frozen=True, slots=True)
class Help(Event):
    topic: str | None


@dataclass(frozen=True, slots=True)
class Verb(Event):
    argument: str | None


@dataclass(frozen=True, slots=True)
class Etrn(Event):
    node: str


@dataclass(frozen=True, slots=True)
class AuthChallenge(Event):
    """The SASL exchange goes on: send ``reply`` (a 334 the core built)."""

    mechanism: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthCredentials(Event):
    """PLAIN/LOGIN finished: check the password, reply 235 or 535 (``AUTH_OK/AUTH_FAILED``)."""

    mechanism: str
    authzid: str
    authcid: str
    password: str = field(repr=False)  # never in a log line by accident


@dataclass(frozen=True, slots=True)
class AuthLookup(Event):
    """SCRAM needs the user's keys: reply with ``conn.scram_challenge(secret)``."""

    mechanism: str
    authzid: str
    authcid: str


@dataclass(frozen=True, slots=True)
class AuthOutcome(Event):
    """SCRAM verified the client proof (``success``); reply 235 or 535."""

    mechanism: str
    authzid: str
    authcid: str
    success: bool


@dataclass(frozen=True, slots=True)
class StartTls(Event):
    pass


@dataclass(frozen=True, slots=True)
class BadCommand(Event):
    """The core rejected a command on its own (syntax, sequence, limits); send ``reply``."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthCancelled(BadCommand):
    """The client cancelled a SASL exchange with ``*`` (RFC 4954 §4): send ``reply`` (501).

    A ``BadCommand`` of its own so that the application can count it as a failed AUTH:
    a cancelled SCRAM exchange has already been given the salt.
    """


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The client closed its side."""

    needs_reply = False
