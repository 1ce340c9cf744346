"""Petrel: an ESMTP mail server (MTA) with a sans-IO protocol core and a durable queue."""

__version__ = "0.1.0"
