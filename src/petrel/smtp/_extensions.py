"""What a server advertises in EHLO, and therefore what it accepts (RFC 5321 §4.1.1.1).

The same object both renders the EHLO keyword lines and gates the parameters the
parser accepts, so nothing can be advertised without being understood or the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class Extensions:
    size: int | None = 20_000_000  # RFC 1870; None = SIZE not advertised
    pipelining: bool = True  # RFC 2920
    eightbitmime: bool = True  # RFC 6152
    enhancedstatuscodes: bool = True  # RFC 2034
    smtputf8: bool = True  # RFC 6531
    chunking: bool = True  # RFC 3030
    binarymime: bool = True  # RFC 3030 (only with CHUNKING)
    dsn: bool = True  # RFC 3461
    etrn: bool = True  # RFC 1985
    deliverby: int | None = 60  # RFC 2852 minimum by-time in seconds; None = off
    expn: bool = True
    verb: bool = True
    help: bool = True
    starttls: bool = False  # RFC 3207; on once TLS is configured and not yet active
    auth: tuple[str, ...] = field(default=())  # RFC 4954 mechanisms offered right now
    # AUTH exists but waits for TLS: AUTH gets 538 5.7.11 (RFC 4954 §6) instead of 503.
    auth_needs_tls: bool = False

    def keywords(self) -> list[str]:
        """EHLO keyword lines, in the classic Sendmail order of the seed sessions."""
        lines: list[str] = []
        if self.enhancedstatuscodes:
            lines.append("ENHANCEDSTATUSCODES")
        if self.pipelining:
            lines.append("PIPELINING")
        if self.expn:
            lines.append("EXPN")
        if self.verb:
            lines.append("VERB")
        if self.eightbitmime:
            lines.append("8BITMIME")
        if self.size is not None:
            lines.append(f"SIZE {self.size}")
        if self.dsn:
            lines.append("DSN")
        if self.etrn:
            lines.append("ETRN")
        if self.auth:
            lines.append("AUTH " + " ".join(self.auth))
        if self.starttls:
            lines.append("STARTTLS")
        if self.deliverby is not None:
            lines.append(f"DELIVERBY {self.deliverby}")
        if self.smtputf8:
            lines.append("SMTPUTF8")
        if self.chunking:
            lines.append("CHUNKING")
            if self.binarymime:
                lines.append("BINARYMIME")
        if self.help:
            lines.append("HELP")
        return lines

    def with_changes(self, **changes: object) -> Extensions:
        return replace(self, **changes)  # type: ignore[arg-type]
