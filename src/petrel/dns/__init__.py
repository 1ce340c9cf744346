"""The one DNS resolver of a Petrel process: MX, A/AAAA, PTR and TXT lookups.

Every lookup Petrel makes (delivery's MX and address lookups, the addresses of the
smarthost, LMTP targets and ``[delivery] hosts``, reverse DNS of clients,
SPF/DKIM/DMARC TXT records, DNSBL queries) goes through one `Resolver`, made in
``app.py`` from ``[dns]`` and passed down. Answers come back as a `Lookup`, which says
whether the name has records, has none (NXDOMAIN or NODATA: a definite answer), or
could not be looked up now (timeout, SERVFAIL, refused: the RFCs' *temperror*). A
lookup never raises into a session.
"""

from ._resolver import LOOPBACK, MX, Lookup, Resolver, Status, literal_addresses

__all__ = ["LOOPBACK", "MX", "Lookup", "Resolver", "Status", "literal_addresses"]
