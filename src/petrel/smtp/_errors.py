"""Errors, typed by side (as in h11).

A *remote* mistake (a client's bad command, a peer's malformed reply) is ordinary SMTP
life: the server side turns it into a ``BadCommand`` event carrying the reply to send,
and the client side raises ``RemoteProtocolError``. A *local* mistake is a bug in the
application driving the core (sending a reply when none is due, a reply with a line
break in it) and raises ``LocalProtocolError``.
"""


class ProtocolError(Exception):
    """Base class of the core's own errors."""


class LocalProtocolError(ProtocolError):
    """The application used the connection object wrongly."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol in a way that cannot be answered with a reply."""
