"""Intake: the one entry for every message (SMTP, sendmail and its pickup, DSN notices).

See `Intake` for the steps; `Origin` and `received_field` make the trace field,
`HeaderSection` scans the header once, `PickupWatcher` feeds local submissions to a
running server. The SMTP session, ``petrel sendmail`` and the queue manager's notices
all call it; nothing else writes to the spool.
"""

from ._intake import (
    Accepted,
    CheckRefused,
    Draft,
    Intake,
    Submitter,
    TooManyHops,
    expand_recipients,
    new_envelope,
)
from .trace import LOCAL_PROTOCOL, Origin, received_field, rfc5322_date

__all__ = [
    "LOCAL_PROTOCOL",
    "Accepted",
    "CheckRefused",
    "Draft",
    "Intake",
    "Origin",
    "Submitter",
    "TooManyHops",
    "expand_recipients",
    "new_envelope",
    "received_field",
    "rfc5322_date",
]
