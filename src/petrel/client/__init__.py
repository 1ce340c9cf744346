"""Petrel's client side: ``petrel send`` (a transcript-printing SMTP client) and
``petrel sendmail`` (local submission straight into the spool)."""
