"""The server's state machine as data (RFC 5321 §4.1.4 "Order of Commands").

Three tables drive ``ServerConnection``:

* ``ALLOWED``     — which verbs each state accepts at all;
* ``OUT_OF_ORDER`` — the 503/554 reply for a verb that is known but not allowed here;
* ``TRANSITIONS`` — where the state goes when the application answers a command with a
  reply of a given class (2 = 2xx, 3 = 3xx, …).  A command answered with an error never
  moves the state, except that any 421 closes the session.
"""

from __future__ import annotations

import enum

from . import _replies as r


class State(enum.Enum):
    GREETING = "greeting"  # connected, our 220 not yet sent
    INIT = "init"  # greeted, waiting for HELO/EHLO
    READY = "ready"  # HELO/EHLO done, no mail transaction
    MAIL = "mail"  # MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading DATA text
    BDAT = "bdat"  # reading a BDAT chunk
    CHUNKING = "chunking"  # between BDAT chunks of one message
    AUTH = "auth"  # inside a SASL exchange
    TLS = "tls"  # STARTTLS accepted; waiting for the handshake
    CLOSED = "closed"


COMMANDS = frozenset(
    [
        "HELO",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "RSET",
        "NOOP",
        "QUIT",
        "VRFY",
        "EXPN",
        "HELP",
        "VERB",
        "ETRN",
        "AUTH",
        "STARTTLS",
    ]
)

_ANYTIME = frozenset({"HELO", "EHLO", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN", "VERB"})

ALLOWED: dict[State, frozenset[str]] = {
    State.INIT: _ANYTIME,
    State.READY: _ANYTIME | {"MAIL", "AUTH", "STARTTLS", "ETRN"},
    # DATA/BDAT need an accepted recipient: in MAIL state they get the 503/554 of
    # _sequence_error (RFC 5321 §3.3), so they are deliberately absent here.
    State.MAIL: _ANYTIME | {"RCPT"},
    State.RCPT: _ANYTIME | {"RCPT", "DATA", "BDAT"},
    State.CHUNKING: frozenset({"BDAT", "RSET", "NOOP", "QUIT", "EHLO", "HELO"}),
}

_BEFORE_HELO = {v: r.SEND_HELO_FIRST for v in COMMANDS - _ANYTIME}
_NO_TRANSACTION = {
    "RCPT": r.NEED_MAIL,
    "DATA": r.NEED_MAIL_BEFORE_DATA,
    "BDAT": r.NEED_MAIL_BEFORE_DATA,
}
_IN_TRANSACTION = {
    "MAIL": r.NESTED_MAIL,
    "AUTH": r.IN_TRANSACTION,
    "STARTTLS": r.IN_TRANSACTION,
    "ETRN": r.IN_TRANSACTION,
}

OUT_OF_ORDER: dict[State, dict[str, r.Reply]] = {
    State.INIT: _BEFORE_HELO,
    State.READY: _NO_TRANSACTION,
    # DATA/BDAT in MAIL state are special-cased: 503 when no RCPT was tried at all,
    # 554 "no valid recipients" when every RCPT was refused.
    State.MAIL: _IN_TRANSACTION,
    State.RCPT: _IN_TRANSACTION,
    State.CHUNKING: {v: r.BDAT_IN_PROGRESS for v in COMMANDS},
}

# (verb, reply class) → next state. Verbs absent here leave the state as it is.
TRANSITIONS: dict[tuple[str, int], State] = {
    ("HELO", 2): State.READY,
    ("EHLO", 2): State.READY,
    ("RSET", 2): State.READY,
    ("MAIL", 2): State.MAIL,
    ("RCPT", 2): State.RCPT,
    ("DATA", 3): State.DATA,
    ("END", 2): State.READY,
    ("END", 4): State.READY,
    ("END", 5): State.READY,
    ("CHUNK", 2): State.CHUNKING,
    ("CHUNK", 4): State.READY,
    ("CHUNK", 5): State.READY,
    ("AUTH", 3): State.AUTH,
    ("AUTH", 2): State.READY,
    ("AUTH", 4): State.READY,
    ("AUTH", 5): State.READY,
    ("QUIT", 2): State.CLOSED,
    ("STARTTLS", 2): State.TLS,
}

# Transactions end (sender and recipients forgotten) on entering these states.
TRANSACTION_ENDS = frozenset({State.READY, State.INIT, State.TLS, State.CLOSED})
