"""Petrel's SMTP protocol core: sans-IO, in the style of h11.

Nothing here touches sockets, files, clocks or asyncio. ``ServerConnection`` turns
bytes into typed events and replies into bytes; ``ClientConnection`` is the client
side, and ``ClientTransaction`` runs one mail transaction over it. The grammar, the
ESMTP parameters and the state tables they use live in the private modules beside them.
"""

from . import _replies as replies
from ._address import Address, AddressError, parse_path
from ._client import ClientConnection, ServerReply, dot_stuff
from ._client_state import ClientState
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    AuthCancelled,
    AuthChallenge,
    AuthCredentials,
    AuthLookup,
    AuthOutcome,
    BadCommand,
    ChunkReceived,
    ConnectionClosed,
    Data,
    DataChunk,
    Ehlo,
    EndOfData,
    Etrn,
    Event,
    Expn,
    Helo,
    Help,
    Mail,
    MessageRejected,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Verb,
    Vrfy,
)
from ._extensions import Extensions
from ._help import help_reply
from ._params import MailParams, RcptParams, decode_xtext, encode_xtext
from ._replies import Reply, reply
from ._server import NextEvent, ServerConnection
from ._state import State
from ._transaction import ClientTransaction, MailFrom, RcptOutcome, RcptTo
from ._util import NEED_DATA, PAUSED, Sentinel

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Address",
    "AddressError",
    "AuthCancelled",
    "AuthChallenge",
    "AuthCredentials",
    "AuthLookup",
    "AuthOutcome",
    "BadCommand",
    "ChunkReceived",
    "ClientConnection",
    "ClientState",
    "ClientTransaction",
    "ConnectionClosed",
    "Data",
    "DataChunk",
    "Ehlo",
    "EndOfData",
    "Etrn",
    "Event",
    "Expn",
    "Extensions",
    "Helo",
    "Help",
    "LocalProtocolError",
    "Mail",
    "MailFrom",
    "MailParams",
    "MessageRejected",
    "NextEvent",
    "Noop",
    "ProtocolError",
    "Quit",
    "Rcpt",
    "RcptOutcome",
    "RcptParams",
    "RcptTo",
    "RemoteProtocolError",
    "Reply",
    "Rset",
    "Sentinel",
    "ServerConnection",
    "ServerReply",
    "StartTls",
    "State",
    "Verb",
    "Vrfy",
    "decode_xtext",
    "dot_stuff",
    "encode_xtext",
    "help_reply",
    "parse_path",
    "replies",
    "reply",
]
