"""TLS material: the server's ``ssl.SSLContext``, made from ``[tls]`` or a self-signed pair.

A fresh install must be able to offer STARTTLS at once (RFC 3207, RFC 8314 §3.3 want
encryption on every submission path), so when ``[tls]`` names no certificate a
self-signed one is generated once under ``<data_dir>/tls/`` and its SHA-256 fingerprint
logged for clients to pin. If that pair cannot be written (a full disk on the first
start), the server runs without TLS and says so (``tls-unavailable``): STARTTLS is not
offered and implicit-TLS connections are closed until a reload succeeds. ``reload``
builds a new context for sessions that start afterwards (every session, STARTTLS or
implicit TLS, runs its own handshake with the context current at that moment); sessions
already running keep the one they shook hands with.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from petrel.config import Config
from petrel.fsutil import ensure_dir, fsync_dir, unlink_quietly, write_all
from petrel.log import log_event

__all__ = [
    "TlsError",
    "TlsManager",
    "check_configured_pair",
    "generate_self_signed",
    "make_context",
]

log = logging.getLogger("petrel.tls")

SELF_SIGNED_CERT = "cert.pem"
SELF_SIGNED_KEY = "key.pem"
_VALIDITY_DAYS = 825  # the longest lifetime browsers ever accepted for a leaf


class TlsError(Exception):
    """The certificate or key cannot be loaded (the message names the file)."""


def make_context(cert: Path, key: Path, configured: bool = False) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, OpenSSL's default (sane) cipher list.

    ``configured``: the pair is ``tls.cert``/``tls.key``, and errors name those keys.
    """
    names = ("tls.cert: ", "tls.key: ") if configured else ("", "")
    for name, path in zip(names, (cert, key), strict=True):
        try:
            with open(path, "rb"):  # which of the two is missing: load_cert_chain won't say
                pass
        except OSError as exc:
            raise TlsError(f"{name}cannot read {path}: {exc.strerror or exc}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        where = "tls.cert, tls.key: " if configured else ""
        raise TlsError(f"{where}cannot load certificate {cert} / key {key}: {exc}") from None
    return ctx


def check_configured_pair(config: Config) -> None:
    """Raise TlsError if ``tls.cert``/``tls.key`` are set and do not load (check-config)."""
    if config.tls.cert is not None and config.tls.key is not None:
        make_context(config.tls.cert, config.tls.key, configured=True)


def generate_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Write an ECDSA P-256 key (0600) and a self-signed certificate for ``hostname``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ensure_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    alt_names.append(x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / SELF_SIGNED_KEY
    cert_path = directory / SELF_SIGNED_CERT
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    fsync_dir(directory)
    return cert_path, key_path


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        unlink_quietly(tmp)  # no half-written key left behind (a full disk)
        raise
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the first certificate in the PEM file, as colon-separated hex."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


class _PairUnwritable(Exception):
    """The self-signed pair could not be written (full disk, read-only or untrusted tls/)."""


TLS_FDS_ENV = "PETREL_TLS_FDS"  # a worker's copies of a root-only cert and key: "cert,key"


def copy_material(cert: Path, key: Path) -> tuple[int, int]:
    """Memory-file copies of the configured pair, read while still root (``[server] user``).

    A worker inherits them (``TLS_FDS_ENV``) and loads its first context from them; a
    reload (SIGHUP) reads the files again, as the user.
    """
    fds: list[int] = []
    for path in (cert, key):
        fd = os.memfd_create(f"petrel-{path.name}", os.MFD_CLOEXEC)
        with open(path, "rb") as f:
            os.write(fd, f.read())
        fds.append(fd)
    return fds[0], fds[1]


def _inherited_material() -> tuple[Path, Path] | None:
    text = os.environ.pop(TLS_FDS_ENV, "")
    if not text:
        return None
    cert_fd, key_fd = (int(part) for part in text.split(","))
    return Path(f"/proc/self/fd/{cert_fd}"), Path(f"/proc/self/fd/{key_fd}")


class TlsManager:
    """Holds the context new sessions use; SIGHUP swaps it for a freshly loaded one.

    `context` is None while there is no certificate at all (see the module docstring).
    """

    def __init__(self, config: Config) -> None:
        self.hostname = config.server.hostname
        self.cert = config.tls.cert
        self.key = config.tls.key
        self.directory = config.server.data_dir / "tls"
        self.context: ssl.SSLContext | None = None
        self._inherited = _inherited_material() if self.cert is not None else None
        try:
            self.context = self._load()
        except _PairUnwritable as exc:
            log_event(
                log,
                "tls-unavailable",
                level=logging.ERROR,
                error=str(exc),
                effect="no STARTTLS, implicit TLS closed, until a reload (SIGHUP) succeeds",
            )

    def _paths(self) -> tuple[Path, Path, bool]:
        if self.cert is not None and self.key is not None:
            if self._inherited is not None:  # once: the parent's copies, read as root
                inherited, self._inherited = self._inherited, None
                return *inherited, False
            return self.cert, self.key, False
        cert = self.directory / SELF_SIGNED_CERT
        key = self.directory / SELF_SIGNED_KEY
        if cert.is_file() and key.is_file():
            return cert, key, True
        try:
            cert, key = generate_self_signed(self.directory, self.hostname)
        except OSError as exc:
            message = f"cannot write a self-signed pair in {self.directory}: {exc}"
            raise _PairUnwritable(message) from None
        log_event(log, "tls-generated", cert=str(cert), key=str(key))
        return cert, key, True

    def _load(self) -> ssl.SSLContext:
        cert, key, self_signed = self._paths()
        ctx = make_context(cert, key, configured=not self_signed)
        try:
            digest = fingerprint(cert)
        except (OSError, ValueError):
            digest = "unknown"
        log_event(
            log,
            "tls-certificate",
            cert=str(self.cert or cert),
            self_signed=str(self_signed).lower(),
            sha256=digest,
        )
        return ctx

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration: the next `reload` loads the pair it names."""
        self.hostname = config.server.hostname
        self.cert = config.tls.cert
        self.key = config.tls.key

    def reload(self) -> bool:
        """Load the certificate again; on failure keep the old context and log why."""
        try:
            self.context = self._load()
        except (TlsError, _PairUnwritable, OSError, ValueError) as exc:
            log_event(log, "tls-reload-failed", level=logging.ERROR, error=str(exc))
            return False
        log_event(log, "tls-reloaded")
        return True
