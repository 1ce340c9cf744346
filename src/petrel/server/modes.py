"""What each listener mode means to the server (RFC 6409 submission, RFC 8314 submissions)."""

from __future__ import annotations

STARTTLS_MODES = frozenset({"smtp", "submission"})  # RFC 3207
IMPLICIT_TLS_MODES = frozenset({"submissions"})  # RFC 8314 §3.3
SUBMISSION_MODES = frozenset({"submission", "submissions"})  # RFC 6409: AUTH before MAIL
