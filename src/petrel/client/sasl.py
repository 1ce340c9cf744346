"""Client-side SASL for SMTP AUTH (RFC 4954): PLAIN, LOGIN and SCRAM-SHA-256.

Each mechanism turns server challenges (decoded bytes) into responses (bytes to be
base64-encoded) and can describe a response for a transcript without ever showing
the password. SCRAM-SHA-256 follows RFC 5802 / RFC 7677 with hashlib and hmac.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

__all__ = [
    "MASK",
    "AuthError",
    "LoginMechanism",
    "Mechanism",
    "PlainMechanism",
    "ScramSha256",
    "choose_mechanism",
    "make_mechanism",
]

MASK = "********"
# A server picks the PBKDF2 iteration count: a hostile one could keep us computing for
# hours (i=2000000000). RFC 7677 §4 asks for at least 4096; real servers use 4096-15000.
SCRAM_MIN_ITERATIONS = 4096
SCRAM_MAX_ITERATIONS = 100_000
PREFERENCE = ("SCRAM-SHA-256", "PLAIN", "LOGIN")  # best first, for --auth auto


class AuthError(Exception):
    """The exchange cannot go on: a bad challenge, or a server we could not verify."""


class Mechanism:
    """One SASL exchange, client side."""

    name = ""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def initial_response(self) -> bytes | None:
        """Bytes for ``AUTH <mech> <initial-response>``, or None to wait for a 334."""
        return None

    def respond(self, challenge: bytes) -> bytes:
        """The answer to one 334 challenge (already base64-decoded)."""
        raise AuthError(f"{self.name}: unexpected challenge {challenge!r}")

    def describe(self, response: bytes) -> tuple[str, str]:
        """(the line to show, what it decodes to), both with the password masked."""
        return base64.b64encode(response).decode("ascii"), _printable(response)

    def success(self, data: bytes | None) -> None:
        """The 235 arrived (with any final server data); raise if it does not check out."""


def _printable(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else f"<{unicodedata.name(c, 'NUL')[:3]}>" for c in text)


class PlainMechanism(Mechanism):
    """RFC 4616: ``authzid NUL authcid NUL password`` in one initial response."""

    name = "PLAIN"

    def initial_response(self) -> bytes:
        return b"\0" + self.user.encode() + b"\0" + self.password.encode()

    def describe(self, response: bytes) -> tuple[str, str]:
        return MASK, f"<NUL>{self.user}<NUL>{MASK}"


class LoginMechanism(Mechanism):
    """The obsolete but ubiquitous LOGIN: ``Username:`` then ``Password:`` (as in the seeds)."""

    name = "LOGIN"

    def __init__(self, user: str, password: str) -> None:
        super().__init__(user, password)
        self._step = 0

    def respond(self, challenge: bytes) -> bytes:
        self._step += 1
        asks_password = b"pass" in challenge.lower() or (
            self._step >= 2 and b"user" not in challenge.lower()
        )
        return (self.password if asks_password else self.user).encode()

    def describe(self, response: bytes) -> tuple[str, str]:
        if response == self.password.encode():
            return MASK, MASK
        return super().describe(response)


def _saslname(name: str) -> str:
    """RFC 5802 §5.1: ``=`` and ``,`` in the user name are escaped."""
    return name.replace("=", "=3D").replace(",", "=2C")


def _saslprep(text: str) -> str:
    """The common part of SASLprep (RFC 4013): map non-ASCII spaces, drop soft hyphens, NFKC."""
    mapped = "".join(
        " " if unicodedata.category(c) == "Zs" else c for c in text if c not in "\u00ad\u200b"
    )
    return unicodedata.normalize("NFKC", mapped)


class ScramSha256(Mechanism):
    """RFC 7677 SCRAM-SHA-256 without channel binding (gs2 header ``n,,``)."""

    name = "SCRAM-SHA-256"

    def __init__(self, user: str, password: str, *, nonce: str | None = None) -> None:
        super().__init__(user, password)
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        self._first_bare = f"n={_saslname(_saslprep(user))},r={self.nonce}"
        self._server_signature: bytes | None = None

    def initial_response(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def respond(self, challenge: bytes) -> bytes:
        if self._server_signature is not None:
            # Some servers send the server-final message as a 334 and want an empty line.
            self.success(challenge)
            return b""
        fields = _fields(challenge)
        nonce, salt, iterations = fields.get("r", ""), fields.get("s"), fields.get("i", "")
        if not nonce.startswith(self.nonce) or len(nonce) == len(self.nonce):
            raise AuthError("SCRAM: the server nonce does not extend ours")
        if salt is None or not iterations.isdigit():
            raise AuthError("SCRAM: malformed server-first message")
        if not SCRAM_MIN_ITERATIONS <= int(iterations) <= SCRAM_MAX_ITERATIONS:
            raise AuthError(
                f"SCRAM: the server asks for {int(iterations)} iterations; refusing counts"
                f" outside {SCRAM_MIN_ITERATIONS}-{SCRAM_MAX_ITERATIONS}"
            )
        salted = hashlib.pbkdf2_hmac(
            "sha256", _saslprep(self.password).encode(), base64.b64decode(salt), int(iterations)
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{challenge.decode()},{final_bare}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{final_bare},p={base64.b64encode(proof).decode()}".encode()

    def success(self, data: bytes | None) -> None:
        """Mutual authentication: the server must prove it knows the password too."""
        if self._server_signature is None:
            raise AuthError("SCRAM: the server accepted before the exchange finished")
        if data is None:
            return  # the 235 carried no data and none came as a 334: nothing to check
        verifier = _fields(data).get("v")
        if verifier is None or not hmac.compare_digest(
            base64.b64decode(verifier), self._server_signature
        ):
            raise AuthError("SCRAM: the server signature does not match")


def _fields(message: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.decode("utf-8", "replace").split(","):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out.setdefault(key, value)
    return out


_MECHANISMS: dict[str, type[Mechanism]] = {
    "PLAIN": PlainMechanism,
    "LOGIN": LoginMechanism,
    "SCRAM-SHA-256": ScramSha256,
}


def choose_mechanism(wanted: str, offered: list[str]) -> str | None:
    """``wanted`` if offered (or forced with no AUTH line at all); ``auto``: the best offered."""
    wanted = wanted.upper()
    if wanted != "AUTO":
        return wanted if wanted in _MECHANISMS else None
    for name in PREFERENCE:
        if name in offered:
            return name
    return None


def make_mechanism(name: str, user: str, password: str) -> Mechanism:
    return _MECHANISMS[name.upper()](user, password)
