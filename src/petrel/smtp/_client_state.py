"""The client's state machine as data: what a client may *send* next (RFC 5321 §4.1.4).

The server side (``_state.py``) moves on the replies it sends. A client that pipelines
(RFC 2920) sends commands before the replies of earlier ones arrive, so its state moves
when a command is **sent**, and a few replies move it again afterwards:

* ``SEND[state][verb]`` — the state after sending ``verb``; a verb missing from the
  row is out of order and ``ClientConnection`` raises ``LocalProtocolError`` with
  ``OUT_OF_ORDER`` text. Besides the verbs, ``TEXT`` (the message after a 354),
  ``SASL`` (a response line inside AUTH) and ``BDAT LAST`` are rows' keys too;
  ``STAY`` keeps the state.
* ``REPLY_MOVES[(verb, reply class)]`` — where the state goes when the reply to a
  command that must wait for its answer (the last of a pipelined group: greeting,
  HELO/EHLO/LHLO, STARTTLS, AUTH, DATA) arrives. Such a command's error reply
  returns to the state it was sent in (``PRIOR``), as an error never moves the server.

What the rows cannot say is handled beside them, from the replies already in: a
refused MAIL returns to READY (the server has no transaction, so RCPT and DATA are out
of order again), and DATA/BDAT are refused once every RCPT is known to be refused
(the server would answer 503/554).
"""

from __future__ import annotations

import enum


class ClientState(enum.Enum):
    CONNECTED = "connected"  # waiting for the greeting
    GREETED = "greeted"  # greeting in; no HELO/EHLO/LHLO accepted (again, after STARTTLS)
    HELLO = "hello"  # HELO/EHLO/LHLO sent, its reply not in: nothing may follow it
    READY = "ready"  # hello accepted, no mail transaction
    MAIL = "mail"  # MAIL sent (its reply may be outstanding), no RCPT yet
    RCPT = "rcpt"  # at least one RCPT sent
    DATA = "data"  # DATA sent, its reply not in
    TEXT = "text"  # 354 received: the message text is due
    CHUNKING = "chunking"  # BDAT chunks sent, the LAST one not yet
    AUTH = "auth"  # AUTH sent, the SASL exchange runs
    STARTTLS = "starttls"  # STARTTLS sent, its reply not in
    TLS = "tls"  # 220 to STARTTLS: the handshake is due (``tls_established``)
    CLOSED = "closed"  # QUIT sent


STAY = None  # SEND value: the state does not change
PRIOR = None  # REPLY_MOVES value: back to the state the command was sent in

_HELLO = {"HELO": ClientState.HELLO, "EHLO": ClientState.HELLO, "LHLO": ClientState.HELLO}
# Allowed wherever a command may be sent and never moving the state. QUIT is allowed
# even while a reply that must be waited for is outstanding, so a client that gives up
# can always say goodbye; only where the server reads something else (the text, a TLS
# handshake) it is not.
_ASIDE = {"NOOP": STAY, "HELP": STAY, "VRFY": STAY, "EXPN": STAY, "VERB": STAY}
_QUIT = {"QUIT": ClientState.CLOSED}

SEND: dict[ClientState, dict[str, ClientState | None]] = {
    ClientState.CONNECTED: {},
    ClientState.GREETED: {
        **_HELLO,
        **_ASIDE,
        **_QUIT,
        "RSET": STAY,
        # AUTH and STARTTLS before EHLO are the server's to refuse (it answers 503).
        "STARTTLS": ClientState.STARTTLS,
        "AUTH": ClientState.AUTH,
    },
    ClientState.HELLO: dict(_QUIT),
    ClientState.READY: {
        **_HELLO,
        **_ASIDE,
        **_QUIT,
        "RSET": ClientState.READY,
        "MAIL": ClientState.MAIL,
        "ETRN": STAY,
        "STARTTLS": ClientState.STARTTLS,
        "AUTH": ClientState.AUTH,
    },
    ClientState.MAIL: {
        **_HELLO,
        **_ASIDE,
        **_QUIT,
        "RSET": ClientState.READY,
        "RCPT": ClientState.RCPT,
    },
    ClientState.RCPT: {
        **_HELLO,
        **_ASIDE,
        **_QUIT,
        "RSET": ClientState.READY,
        "RCPT": ClientState.RCPT,
        "DATA": ClientState.DATA,
        "BDAT": ClientState.CHUNKING,
        "BDAT LAST": ClientState.READY,
    },
    ClientState.DATA: dict(_QUIT),
    ClientState.TEXT: {"TEXT": ClientState.READY},
    ClientState.CHUNKING: {
        **_QUIT,
        "NOOP": STAY,
        "RSET": ClientState.READY,
        "BDAT": ClientState.CHUNKING,
        "BDAT LAST": ClientState.READY,
    },
    ClientState.AUTH: {**_QUIT, "SASL": ClientState.AUTH},
    ClientState.STARTTLS: dict(_QUIT),
    ClientState.TLS: {},
    ClientState.CLOSED: {},
}

# Why a command is out of order, by state (the client's own 503, said as an exception).
OUT_OF_ORDER: dict[ClientState, str] = {
    ClientState.CONNECTED: "wait for the server's greeting first",
    ClientState.GREETED: "send HELO/EHLO/LHLO first (and wait for its 250)",
    ClientState.HELLO: "wait for the reply to HELO/EHLO/LHLO",
    ClientState.READY: "no mail transaction: send MAIL first",
    ClientState.MAIL: "send RCPT first (or RSET)",
    ClientState.RCPT: "a mail transaction is open (RSET ends it)",
    ClientState.DATA: "wait for the reply to DATA",
    ClientState.TEXT: "the message text is due (354 received)",
    ClientState.CHUNKING: "a BDAT transfer is in progress",
    ClientState.AUTH: "a SASL exchange is in progress",
    ClientState.STARTTLS: "wait for the reply to STARTTLS",
    ClientState.TLS: "STARTTLS accepted: finish the handshake first",
    ClientState.CLOSED: "QUIT was sent",
}

# Commands whose reply must be waited for, and where that reply (by class) moves the state.
# The greeting's key is "CONNECT"; any greeting lets the client speak (QUIT after a 554).
REPLY_MOVES: dict[tuple[str, int], ClientState | None] = {
    **{("CONNECT", c): ClientState.GREETED for c in (2, 3, 4, 5)},
    **{(v, 2): ClientState.READY for v in ("HELO", "EHLO", "LHLO")},
    **{(v, c): PRIOR for v in ("HELO", "EHLO", "LHLO") for c in (3, 4, 5)},
    ("STARTTLS", 2): ClientState.TLS,
    **{("STARTTLS", c): PRIOR for c in (3, 4, 5)},
    ("AUTH", 3): ClientState.AUTH,
    **{("AUTH", c): PRIOR for c in (2, 4, 5)},
    ("DATA", 3): ClientState.TEXT,
    # A refused DATA leaves the transaction open at the server (RSET ends it).
    **{("DATA", c): ClientState.RCPT for c in (2, 4, 5)},
}

WAITS = frozenset({"CONNECT", "HELO", "EHLO", "LHLO", "STARTTLS", "AUTH", "DATA"})
