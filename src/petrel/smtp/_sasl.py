"""SASL exchanges of RFC 4954 AUTH, server side, without I/O.

A mechanism is a small state machine: ``step(response)`` takes the decoded client
response (None when ``AUTH`` came without an initial response) and returns what the
connection must do next — send a challenge, ask the application to check credentials
(PLAIN, LOGIN), ask it for a user's SCRAM keys, report a verified outcome, or fail.
The password-checking itself stays with the application (it owns the user store and the
slow argon2 hash); SCRAM's proof is pure arithmetic on keys and is checked here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from . import _replies as r

MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    authzid: str
    authcid: str
    password: str


@dataclass(frozen=True, slots=True)
class Lookup:
    authzid: str
    authcid: str


@dataclass(frozen=True, slots=True)
class Outcome:
    authzid: str
    authcid: str
    success: bool


@dataclass(frozen=True, slots=True)
class Failure:
    reply: r.Reply


Step = Challenge | Credentials | Lookup | Outcome | Failure

MALFORMED = r.reply(501, "5.5.2", "Malformed authentication exchange")
BAD_BASE64 = r.reply(501, "5.5.2", "Invalid base64 data")
CANCELLED = r.reply(501, "5.5.2", "Authentication cancelled")


def decode_response(text: str) -> bytes | None:
    """Strict base64 of RFC 4954 §4 ("=" alone is an empty response); None when invalid."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def challenge_reply(data: bytes) -> r.Reply:
    return r.Reply(334, (base64.b64encode(data).decode("ascii"),))


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Mechanism:
    name = ""

    def step(self, response: bytes | None) -> Step:
        raise NotImplementedError


class Plain(Mechanism):
    """RFC 4616: ``[authzid] NUL authcid NUL passwd`` in one response."""

    name = "PLAIN"

    def step(self, response: bytes | None) -> Step:
        if response is None:
            return Challenge(b"")
        parts = response.split(b"\0")
        decoded = [_utf8(p) for p in parts]
        if len(parts) != 3 or None in decoded:
            return Failure(MALFORMED)
        authzid, authcid, password = (d or "" for d in decoded)
        if not authcid or not password:
            return Failure(MALFORMED)
        return Credentials(authzid, authcid, password)


class Login(Mechanism):
    """The de-facto LOGIN mechanism, with the challenges of the classic sessions."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None

    def step(self, response: bytes | None) -> Step:
        if response is None:
            return Challenge(b"Username:")  # 334 VXNlcm5hbWU6
        text = _utf8(response)
        if text is None:
            return Failure(MALFORMED)
        if self._user is None:
            if not text:
                return Failure(MALFORMED)
            self._user = text
            return Challenge(b"Password:")  # 334 UGFzc3dvcmQ6
        return Credentials("", self._user, text)


class ScramSha256(Mechanism):
    """RFC 5802 / RFC 7677 without channel binding (SCRAM-SHA-256-PLUS is not offered)."""

    name = "SCRAM-SHA-256"

    def __init__(self, nonce: Callable[[], str]) -> None:
        self._nonce = nonce
        self._stage = 0
        self._gs2 = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._full_nonce = ""
        self._authzid = ""
        self._authcid = ""
        self._stored_key = b""
        self._server_key = b""
        self._success = False

    def step(self, response: bytes | None) -> Step:
        if response is None:
            return Challenge(b"")  # the client sends client-first-message next
        text = _utf8(response)
        if text is None:
            return Failure(MALFORMED)
        if self._stage == 0:
            return self._client_first(text)
        if self._stage == 2:
            return self._client_final(text)
        if self._stage == 3 and text == "":
            return Outcome(self._authzid, self._authcid, self._success)
        return Failure(MALFORMED)

    def _client_first(self, text: str) -> Step:
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y") or not parts[2].startswith("n="):
            return Failure(MALFORMED)  # "p=…" asks for channel binding we do not offer
        authzid = parts[1]
        if authzid and not authzid.startswith("a="):
            return Failure(MALFORMED)
        self._gs2 = f"{parts[0]},{authzid},"
        self._authzid = _saslname(authzid[2:]) if authzid else ""
        self._client_first_bare = parts[2]
        fields = parts[2].split(",")
        if len(fields) < 2 or not fields[1].startswith("r=") or len(fields[1]) < 3:
            return Failure(MALFORMED)
        self._authcid = _saslname(fields[0][2:])
        if not self._authcid:
            return Failure(MALFORMED)
        self._full_nonce = fields[1][2:] + self._nonce()
        self._stage = 1
        return Lookup(self._authzid, self._authcid)

    def server_first(
        self, salt: bytes, iterations: int, stored_key: bytes, server_key: bytes
    ) -> bytes:
        """The application supplied the user's keys (or decoys for an unknown user)."""
        self._stored_key = stored_key
        self._server_key = server_key
        self._server_first = (
            f"r={self._full_nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        )
        self._stage = 2
        return self._server_first.encode()

    def _client_final(self, text: str) -> Step:
        without_proof, sep, proof_field = text.rpartition(",p=")
        fields = without_proof.split(",")
        if not sep or len(fields) < 2:
            return Failure(MALFORMED)
        binding = base64.b64encode(self._gs2.encode()).decode()
        if fields[0] != f"c={binding}" or fields[1] != f"r={self._full_nonce}":
            return Failure(MALFORMED)
        try:
            proof = base64.b64decode(proof_field, validate=True)
        except (binascii.Error, ValueError):
            return Failure(MALFORMED)
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(self._stored_key, auth_message, "sha256")
        if len(proof) != len(signature):
            return Failure(MALFORMED)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        self._success = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key)
        self._stage = 3
        if not self._success:
            return Outcome(self._authzid, self._authcid, False)
        server_signature = hmac.digest(self._server_key, auth_message, "sha256")
        return Challenge(b"v=" + base64.b64encode(server_signature))


def _saslname(text: str) -> str:
    """RFC 5802 §5.1: ``=2C`` is ",", ``=3D`` is "="."""
    return text.replace("=2C", ",").replace("=3D", "=")


def default_nonce() -> str:
    return secrets.token_urlsafe(18)


def start(mechanism: str, nonce: Callable[[], str] = default_nonce) -> Mechanism:
    if mechanism == "PLAIN":
        return Plain()
    if mechanism == "LOGIN":
        return Login()
    if mechanism == "SCRAM-SHA-256":
        return ScramSha256(nonce)
    raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
