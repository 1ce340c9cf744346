"""DKIM signing (RFC 6376, RFC 8463): keys (`keys`) and the intake's `Signer`.

`petrel dkim keygen` makes a key under ``<data_dir>/dkim/`` and prints the TXT record
to publish; `petrel dkim check` looks the record up through ``[dns]`` and compares.
Verification of inbound mail lives with the other authentication checks.
"""

from .keys import SigningKey
from .signer import Signer

__all__ = ["Signer", "SigningKey"]
