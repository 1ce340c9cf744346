"""What each listener mode means to the server (RFC 6409 submission, RFC 8314 submissions)."""

from __future__ import annotations

# Modes whose machinery (LMTP) is not in this build yet: their listeners are skipped with
# a warning rather than served as something they are not.
SERVED_MODES = frozenset({"smtp", "submission", "submissions"})
STARTTLS_MODES = frozenset({"smtp", "submission"})  # RFC 3207
IMPLICIT_TLS_MODES = frozenset({"submissions"})  # RFC 8314 §3.3
SUBMISSION_MODES = frozenset({"submission", "submissions"})  # RFC 6409: AUTH before MAIL
