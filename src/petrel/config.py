"""Petrel's TOML configuration: schema, defaults and validation.

Every problem raises `ConfigError` with a message that starts with the dotted key at
fault (``limits.errors: ...``), so `petrel check-config` points the operator at the
exact line to fix instead of failing later with a traceback.
"""

from __future__ import annotations

import ipaddress
import math
import os
import pwd
import re
import resource
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FD_RESERVE",
    "SMTP_MODES",
    "AliasesSection",
    "AntispamSection",
    "AuthSection",
    "AuthenticationSection",
    "Config",
    "ConfigError",
    "DeliverySection",
    "DkimSection",
    "DkimSign",
    "DnsSection",
    "DnsblSite",
    "DomainsSection",
    "HttpSection",
    "LimitsSection",
    "Listener",
    "LogSection",
    "PolicySection",
    "QueueSection",
    "RelaySection",
    "ServerSection",
    "TlsSection",
    "UsersSection",
    "default_connections",
    "is_loopback",
    "load_config",
    "parse_domain",
    "parse_duration",
    "parse_selector",
]

LISTENER_MODES = ("smtp", "submission", "submissions", "lmtp", "http")
SMTP_MODES = ("smtp", "submission", "submissions", "lmtp")  # served by SMTP sessions
HTTP_AUTH_MODES = ("admins", "none")
EXPOSURE_LEVELS = ("off", "authenticated", "on")
RELAY_TLS_MODES = ("required", "opportunistic")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
BARE_LF_MODES = ("normalize", "reject")
LOG_TARGETS = ("stderr", "syslog", "file")  # petrel.log.TARGETS; config imports no logging
LOG_FORMATS = ("text", "json")
DEFAULT_LOG_FILE = Path("/var/log/petrel/petrel.log")
_DEFAULT_EXEMPT_TEXT = ("127.0.0.0/8", "::1/128")
DEFAULT_EXEMPT: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in _DEFAULT_EXEMPT_TEXT)
# [server] proxy_networks: who may send a PROXY header to a proxy_protocol listener.
_DEFAULT_PROXY_TEXT = ("127.0.0.0/8",)
DEFAULT_PROXY: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in _DEFAULT_PROXY_TEXT)

_SECTIONS = frozenset(
    {
        "server",
        "listener",
        "log",
        "tls",
        "domains",
        "limits",
        "queue",
        "relay",
        "policy",
        "aliases",
        "auth",
        "delivery",
        "antispam",
        "users",
        "dns",
        "dkim",
        "authentication",
        "http",
    }
)
QUEUE_BACKENDS = ("spool", "postgresql")
USERS_BACKENDS = ("file", "postgresql")
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
_DEFAULT_LISTENERS = (
    ("127.0.0.1:2525", "smtp"),
    ("127.0.0.1:2587", "submission"),
    ("127.0.0.1:2465", "submissions"),
    ("127.0.0.1:8025", "http"),  # the web console, the JSON API and /metrics
)
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS_RE = re.compile(r"\d+(?:\.\d+)?")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MISSING: Any = object()
# Descriptors kept back from sessions: listeners, the spool, logs, outgoing delivery.
FD_RESERVE = 256
# An idle session costs a few KiB (docs/architecture.md §6): even this many is a few
# hundred MiB, so past it an operator should choose the figure deliberately.
_MAX_DEFAULT_CONNECTIONS = 50_000
PREGREET_ACTIONS = ("reject", "off")
# A greeting later than this loses clients (RFC 5321 §4.5.3.2.1: they wait 5 minutes).
_MAX_GREET_DELAY = 300.0
# postscreen's dnsbl_sites: "zone", "zone=127.0.0.[2..11]", "zone=127.0.[0..255].[1;3]*-2".
_DNSBL_RE = re.compile(r"([^=*]+)(?:=([0-9.\[\];]+))?(?:\*(-?\d+))?")
_OCTET = r"(\[[0-9.;]*\]|\d{1,3})"
_DNSBL_FILTER_RE = re.compile(r"\.".join([_OCTET] * 4))
_OCTET_ITEM_RE = re.compile(r"(\d{1,3})(?:\.\.(\d{1,3}))?")
# A rate's window is sixteen buckets of at most 65535 counts (policy/throttle.py).
_MAX_RATE = 1_000_000


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key (or the file)."""


@dataclass(frozen=True, slots=True)
class ServerSection:
    hostname: str
    data_dir: Path
    reverse_dns: bool
    workers: int
    user: str | None = None  # started as root: run as this user once listeners are bound
    # Load balancers allowed to send the PROXY header to a proxy_protocol listener.
    proxy_networks: tuple[IPNetwork, ...] = field(default_factory=lambda: DEFAULT_PROXY)


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    mode: str
    proxy_protocol: bool = False  # a HAProxy PROXY header (v1/v2) comes first


@dataclass(frozen=True, slots=True)
class TlsSection:
    """Both paths or neither: without them the server makes a self-signed pair."""

    cert: Path | None
    key: Path | None


@dataclass(frozen=True, slots=True)
class DomainsSection:
    local: frozenset[str]
    relay_networks: tuple[IPNetwork, ...]
    lmtp: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LimitsSection:
    message_size: int
    recipients: int
    connections: int
    connections_per_ip: int
    errors: int
    command_timeout: float
    data_timeout: float
    min_data_rate: int = 500  # octets per second of message text, after a grace period
    junk_commands: int = 100  # NOOP, RSET, VRFY, ... before each counts as an error
    tls_handshake_timeout: float = 10.0
    tls_handshakes_per_ip: int = 10  # implicit-TLS handshakes in progress per client
    # With domains.relay_networks: clients here skip the per-IP caps and the reserve rule
    # (Postfix exempts mynetworks); they still count toward ``connections``.
    exempt_networks: tuple[IPNetwork, ...] = field(default_factory=lambda: DEFAULT_EXEMPT)
    # Per client (IPv4 address, IPv6 /64) and minute; 0: unlimited. Exempt clients skip them.
    connection_rate: int = 60
    message_rate: int = 120
    recipient_rate: int = 600
    user_message_rate: int = 200  # per authenticated user and hour, exempt or not
    # Octets of strangers' messages held whole for the inbound checks, in one process.
    checks_memory: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class QueueSection:
    run_interval: float
    min_backoff: float
    max_backoff: float
    lifetime: float
    delay_warning: float
    # Where the queue lives: "spool" (files under data_dir) or "postgresql" (``dsn``,
    # shared by every node that names it; ``node`` tells them apart in leases).
    backend: str = "spool"
    dsn: str = ""
    node: str = ""
    lease: float = 600.0  # how long a delivery attempt owns a message (postgresql)


@dataclass(frozen=True, slots=True)
class UsersSection:
    """Where `petrel user` and AUTH keep users: ``<data_dir>/users`` or the queue's
    PostgreSQL database (``[queue] dsn``), so every node sees one user list."""

    backend: str = "file"


@dataclass(frozen=True, slots=True)
class RelaySection:
    smarthost_host: str
    smarthost_port: int
    username: str | None
    password_file: Path | None
    tls: str


@dataclass(frozen=True, slots=True)
class DeliverySection:
    """How the SMTP/LMTP client behaves; ``hosts`` and ``mx_port`` let test rigs skip DNS."""

    mx_port: int = 25
    hosts: dict[str, tuple[tuple[str, int | None], ...]] = field(default_factory=dict)
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    destination_concurrency: int = 20
    tls_verify: bool = False
    max_received: int = 100
    # False: no DNS at all; a domain missing from ``hosts`` is deferred (4.4.3). For test
    # rigs and closed networks, where a lookup must never leave the machine.
    dns: bool = True
    # Local Maildir recipients written at intake, in the commit's sync rounds, before the
    # 250 (a transaction with more takes the queue for all of them); 0: always the queue.
    direct: int = 16


@dataclass(frozen=True, slots=True)
class DnsSection:
    """The resolver every lookup uses (petrel.dns); ``nameservers`` None: /etc/resolv.conf."""

    nameservers: tuple[tuple[str, int], ...] | None = None  # (IP address, port)
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class DkimSign:
    """One ``[[dkim.sign]]`` entry; the key file is read by petrel.dkim, not here, so
    `petrel dkim keygen` can make a key the file already names."""

    domain: str  # signs mail whose From: domain is this or a subdomain
    selector: str
    key: Path  # absolute (relative paths are in data_dir)


@dataclass(frozen=True, slots=True)
class DkimSection:
    sign: tuple[DkimSign, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicySection:
    vrfy: str
    expn: str
    strict_paths: bool
    # normalize: an LF-only line is read as a CRLF line, only CRLF.CRLF ends DATA
    # (Postfix 3.9's smtpd_forbid_bare_newline = normalize); reject: 500 / 550 5.6.0.
    bare_lf: str = "normalize"


@dataclass(frozen=True, slots=True)
class DnsblSite:
    """One ``antispam.dnsbl`` entry: a list zone, the answers that count, their weight.

    ``octets`` holds, per octet of the 127.0.0.x answer, the values that match (None:
    any answer matches, postscreen's bare ``zone``). A negative weight makes it a DNSWL.
    """

    zone: str
    octets: tuple[frozenset[int], ...] | None = None
    weight: int = 1

    def matches(self, answer: str) -> bool:
        if self.octets is None:
            return True
        parts = answer.split(".")
        return len(parts) == 4 and all(
            part.isdigit() and int(part) in allowed
            for part, allowed in zip(parts, self.octets, strict=True)
        )


@dataclass(frozen=True, slots=True)
class AntispamSection:
    """postscreen-style checks at connect, greylisting and Postfix's sender checks."""

    dnsbl: tuple[DnsblSite, ...] = ()
    dnsbl_threshold: int = 1  # summed weights at which a client gets 554 5.7.1
    pregreet: str = "reject"  # reject | off: a client that talks before our 220
    greet_delay: float = 0.0  # seconds before the 220 (0: at once, no pregreet test)
    greylist: bool = False
    greylist_delay: float = 300.0
    reject_unknown_sender_domain: bool = False  # MAIL FROM domain without MX/A/AAAA
    reject_non_fqdn_helo: bool = False  # HELO/EHLO name that is no FQDN: 504 5.5.2


@dataclass(frozen=True, slots=True)
class AliasesSection:
    file: Path


@dataclass(frozen=True, slots=True)
class LogSection:
    """Where ``petrel serve`` and its workers log, and how lines are spelt."""

    target: str = "stderr"  # stderr | syslog | file
    file: Path = DEFAULT_LOG_FILE  # target = "file"; relative paths are in data_dir
    format: str = "text"  # text | json; ``--log-format`` wins


@dataclass(frozen=True, slots=True)
class AuthSection:
    """SMTP AUTH (RFC 4954) and the submission service's rules (RFC 6409)."""

    allow_plaintext_auth: bool = False  # offer AUTH before TLS: test rigs only
    mechanisms: tuple[str, ...] = AUTH_MECHANISMS
    sender_login_match: bool = True  # submission: MAIL FROM must be the user's own
    max_failures: int = 5  # failed AUTHs per client IP within failure_window ...
    failure_window: float = 600.0
    lockout: float = 900.0  # ... then 421 4.7.0 for this long


@dataclass(frozen=True, slots=True)
class AuthenticationSection:
    """Inbound checks (SPF, DKIM, DMARC, ARC) on mail from unauthenticated clients."""

    checks: bool = True  # one Authentication-Results field on every such message
    dmarc_enforce: bool = True  # p=reject -> 550 5.7.1, p=quarantine -> the Junk folder
    spf_reject: bool = False  # an SPF fail alone -> 550 5.7.23


@dataclass(frozen=True, slots=True)
class HttpSection:
    """The ``http`` listeners: who may use the console, the API and /metrics."""

    auth: str = "admins"  # admins: HTTP Basic or token of a `--admin` user | none (loopback)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSection
    listeners: tuple[Listener, ...]
    tls: TlsSection
    domains: DomainsSection
    limits: LimitsSection
    queue: QueueSection
    relay: RelaySection | None
    policy: PolicySection
    aliases: AliasesSection
    source: Path | None
    auth: AuthSection = field(default_factory=AuthSection)
    delivery: DeliverySection = field(default_factory=DeliverySection)
    log: LogSection = field(default_factory=LogSection)
    antispam: AntispamSection = field(default_factory=AntispamSection)
    users: UsersSection = field(default_factory=UsersSection)
    dns: DnsSection = field(default_factory=DnsSection)
    dkim: DkimSection = field(default_factory=DkimSection)
    authentication: AuthenticationSection = field(default_factory=AuthenticationSection)
    http: HttpSection = field(default_factory=HttpSection)

    @classmethod
    def default(cls) -> Config:
        """The embedded defaults, with data_dir relative to the current directory."""
        return _build({}, base_dir=Path.cwd(), source=None)


SYSTEM_CONFIG = Path("/etc/petrel/petrel.toml")


def default_config_path() -> Path | None:
    """The file used without ``--config``: ``$PETREL_CONFIG``, else ``SYSTEM_CONFIG``
    when it exists, else None (the embedded defaults: ``make serve`` on a fresh checkout).
    """
    env = os.environ.get("PETREL_CONFIG")
    if env:
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load_config(path: Path | None) -> Config:
    """Read and validate the TOML file at `path`; None means the embedded defaults."""
    if path is None:
        return Config.default()
    source = _absolute(Path(path))
    try:
        with source.open("rb") as fp:
            data = tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return _build(data, base_dir=source.parent, source=source)


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number or a string like "30s", "5m", "4h", "5d" or "1h30m"."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(
            f'{key}: must be a duration like "30s", "5m", "4h", "5d" or seconds, got {_show(value)}'
        )
    if isinstance(value, str):
        text = value.strip().lower()
        if _SECONDS_RE.fullmatch(text):
            seconds = float(text)
        elif _DURATION_RE.fullmatch(text):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART_RE.findall(text)
            )
        else:
            raise ConfigError(
                f'{key}: must be a duration like "30s", "5m", "4h", "5d" or seconds, got {value!r}'
            )
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{key}: must be a positive duration, got {_show(value)}")
    return seconds


class _Table:
    """A TOML table being read: values are taken one by one, leftovers are unknown keys."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table, got {_show(data)}")
        self._data = dict(data)
        self.where = where

    def key(self, name: str) -> str:
        return f"{self.where}.{name}"

    def take(self, name: str, default: Any = _MISSING) -> Any:
        if name in self._data:
            return self._data.pop(name)
        if default is _MISSING:
            raise ConfigError(f"{self.key(name)}: required")
        return default

    def names(self) -> list[str]:
        return list(self._data)

    def finish(self) -> None:
        for name in self._data:
            raise ConfigError(f"{self.key(name)}: unknown key")


def _build(data: dict[str, Any], base_dir: Path, source: Path | None) -> Config:
    for name in data:
        if name not in _SECTIONS:
            raise ConfigError(f"{name}: unknown section")
    server = _server(_Table(data.get("server", {}), "server"), base_dir)
    queue = _queue(_Table(data.get("queue", {}), "queue"), server.hostname)
    config = Config(
        server=server,
        listeners=_listeners(data.get("listener", _MISSING)),
        tls=_tls(_Table(data.get("tls", {}), "tls"), base_dir),
        domains=_domains(_Table(data.get("domains", {}), "domains"), server.hostname),
        limits=_limits(_Table(data.get("limits", {}), "limits")),
        queue=queue,
        relay=_relay(_Table(data["relay"], "relay"), base_dir) if "relay" in data else None,
        policy=_policy(_Table(data.get("policy", {}), "policy")),
        aliases=_aliases(_Table(data.get("aliases", {}), "aliases"), server.data_dir),
        source=source,
        auth=_auth(_Table(data.get("auth", {}), "auth")),
        delivery=_delivery(_Table(data.get("delivery", {}), "delivery")),
        log=_log(_Table(data.get("log", {}), "log"), server.data_dir),
        antispam=_antispam(_Table(data.get("antispam", {}), "antispam")),
        users=_users(_Table(data.get("users", {}), "users"), queue),
        dns=_dns(_Table(data.get("dns", {}), "dns")),
        dkim=_dkim(_Table(data.get("dkim", {}), "dkim"), server.data_dir),
        authentication=_authentication(_Table(data.get("authentication", {}), "authentication")),
        http=_http(_Table(data.get("http", {}), "http")),
    )
    _check_http_auth(config)
    return config


def _check_http_auth(config: Config) -> None:
    """``http.auth = "none"`` opens every mailbox to whoever can connect: loopback only."""
    if config.http.auth != "none":
        return
    for index, listener in enumerate(config.listeners):
        if listener.mode == "http" and not is_loopback(listener.host):
            shown = f"[{listener.host}]" if ":" in listener.host else listener.host or "*"
            raise ConfigError(
                f'http.auth: "none" is allowed only when every http listener is on loopback;'
                f" listener[{index}] is {shown}:{listener.port}"
            )


def is_loopback(host: str) -> bool:
    """A listener host that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http(t: _Table) -> HttpSection:
    auth = _choice(t.take("auth", "admins"), t.key("auth"), HTTP_AUTH_MODES)
    t.finish()
    return HttpSection(auth)


def _default_hostname() -> str:
    """The machine's FQDN, or its plain name when the resolver maps it to ``localhost``.

    getfqdn may wait on DNS, so it is only asked when the operator gave no name.
    """
    fqdn = socket.getfqdn().lower()
    if fqdn in ("", "localhost", "localhost.localdomain"):
        return socket.gethostname().lower() or "localhost"
    return fqdn


def _server(t: _Table, base_dir: Path) -> ServerSection:
    hostname = t.take("hostname", None)
    hostname = _default_hostname() if hostname is None else _domain(hostname, t.key("hostname"))
    data_dir = _path(t.take("data_dir", "petrel-data"), t.key("data_dir"), base_dir)
    reverse_dns = _bool(t.take("reverse_dns", True), t.key("reverse_dns"))
    workers = t.take("workers", 1)
    if workers == "auto":
        workers = os.cpu_count() or 1
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
        raise ConfigError(
            f'{t.key("workers")}: must be a positive integer or "auto", got {_show(workers)}'
        )
    user = t.take("user", None)
    if user is not None:
        if not isinstance(user, str) or not user:
            raise ConfigError(f"{t.key('user')}: must be a user name, got {_show(user)}")
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"{t.key('user')}: no such user {user!r}") from None
    proxy_networks = _networks(t, "proxy_networks", list(_DEFAULT_PROXY_TEXT))
    t.finish()
    return ServerSection(hostname, data_dir, reverse_dns, workers, user, proxy_networks)


def _listeners(value: Any) -> tuple[Listener, ...]:
    if value is _MISSING:
        return tuple(Listener(*_host_port(a, "listener", 0), m) for a, m in _DEFAULT_LISTENERS)
    if not isinstance(value, list):
        raise ConfigError(
            f"listener: must be an array of tables ([[listener]]), got {_show(value)}"
        )
    if not value:
        raise ConfigError("listener: at least one [[listener]] is required")
    listeners: list[Listener] = []
    seen: dict[tuple[str, int], int] = {}
    for index, item in enumerate(value):
        t = _Table(item, f"listener[{index}]")
        host, port = _host_port(t.take("address"), t.key("address"), min_port=0)
        mode = _choice(t.take("mode"), t.key("mode"), LISTENER_MODES)
        proxy = _bool(t.take("proxy_protocol", False), t.key("proxy_protocol"))
        t.finish()
        if proxy and mode == "http":
            raise ConfigError(f'{t.key("proxy_protocol")}: not supported with mode = "http"')
        if port and (host, port) in seen:
            raise ConfigError(f"{t.key('address')}: same address as listener[{seen[host, port]}]")
        seen[host, port] = index
        listeners.append(Listener(host, port, mode, proxy))
    return tuple(listeners)


def _tls(t: _Table, base_dir: Path) -> TlsSection:
    cert = t.take("cert", None)
    key = t.take("key", None)
    t.finish()
    if cert is not None and key is None:
        raise ConfigError(f"{t.key('key')}: required when tls.cert is set")
    if key is not None and cert is None:
        raise ConfigError(f"{t.key('cert')}: required when tls.key is set")
    if cert is None or key is None:
        return TlsSection(None, None)
    return TlsSection(_path(cert, t.key("cert"), base_dir), _path(key, t.key("key"), base_dir))


def _domains(t: _Table, hostname: str) -> DomainsSection:
    local_value = t.take("local", None)
    if local_value is None:
        local = frozenset({hostname, "localhost"})
    else:
        items = _list(local_value, t.key("local"))
        local = frozenset(_domain(v, f"{t.key('local')}[{i}]") for i, v in enumerate(items))
    relay_networks = _networks(t, "relay_networks", [])
    lmtp_table = _Table(t.take("lmtp", {}), t.key("lmtp"))
    lmtp: dict[str, str] = {}
    for name in lmtp_table.names():
        key = lmtp_table.key(name)
        domain = _domain(name, key)
        target = _str(lmtp_table.take(name), key)
        if not target.startswith("/"):  # else a unix socket path
            try:
                _host_port(target, key, min_port=1)
            except ConfigError as exc:
                raise ConfigError(
                    f'{exc} (an LMTP target is "host:port" or an absolute unix socket path)'
                ) from None
        lmtp[domain] = target
    t.finish()
    return DomainsSection(local, relay_networks, lmtp)


def default_connections() -> int:
    """``limits.connections`` when the config leaves it out: what the fd limit allows.

    ``petrel serve`` lifts the soft RLIMIT_NOFILE to the hard limit. A session holds one
    descriptor, and a second while a large message goes to the spool; ``FD_RESERVE`` is
    kept for everything else. Memory is not the constraint below the cap.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fds = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    return max(1, min(_MAX_DEFAULT_CONNECTIONS, (fds - FD_RESERVE) // 2))


def _limits(t: _Table) -> LimitsSection:
    connections = t.take("connections", None)
    limits = LimitsSection(
        message_size=_positive_int(t.take("message_size", 20_000_000), t.key("message_size")),
        recipients=_positive_int(t.take("recipients", 100), t.key("recipients")),
        connections=default_connections()
        if connections is None
        else _positive_int(connections, t.key("connections")),
        connections_per_ip=_positive_int(
            t.take("connections_per_ip", 50), t.key("connections_per_ip")
        ),
        errors=_positive_int(t.take("errors", 10), t.key("errors")),
        command_timeout=parse_duration(t.take("command_timeout", "5m"), t.key("command_timeout")),
        data_timeout=parse_duration(t.take("data_timeout", "10m"), t.key("data_timeout")),
        min_data_rate=_positive_int(t.take("min_data_rate", 500), t.key("min_data_rate")),
        checks_memory=_positive_int(
            t.take("checks_memory", 256 * 1024 * 1024), t.key("checks_memory")
        ),
        junk_commands=_positive_int(t.take("junk_commands", 100), t.key("junk_commands")),
        tls_handshake_timeout=parse_duration(
            t.take("tls_handshake_timeout", "10s"), t.key("tls_handshake_timeout")
        ),
        tls_handshakes_per_ip=_positive_int(
            t.take("tls_handshakes_per_ip", 10), t.key("tls_handshakes_per_ip")
        ),
        exempt_networks=_networks(t, "exempt_networks", list(_DEFAULT_EXEMPT_TEXT)),
        connection_rate=_rate(t.take("connection_rate", 60), t.key("connection_rate")),
        message_rate=_rate(t.take("message_rate", 120), t.key("message_rate")),
        recipient_rate=_rate(t.take("recipient_rate", 600), t.key("recipient_rate")),
        user_message_rate=_rate(t.take("user_message_rate", 200), t.key("user_message_rate")),
    )
    t.finish()
    return limits


def _queue(t: _Table, hostname: str) -> QueueSection:
    queue = QueueSection(
        run_interval=parse_duration(t.take("run_interval", "30m"), t.key("run_interval")),
        min_backoff=parse_duration(t.take("min_backoff", "5m"), t.key("min_backoff")),
        max_backoff=parse_duration(t.take("max_backoff", "1h"), t.key("max_backoff")),
        lifetime=parse_duration(t.take("lifetime", "5d"), t.key("lifetime")),
        delay_warning=parse_duration(t.take("delay_warning", "4h"), t.key("delay_warning")),
        backend=_choice(t.take("backend", "spool"), t.key("backend"), QUEUE_BACKENDS),
        dsn=t.take("dsn", ""),
        node=_str(t.take("node", hostname), t.key("node")),
        lease=parse_duration(t.take("lease", "10m"), t.key("lease")),
    )
    t.finish()
    if not isinstance(queue.dsn, str):
        raise ConfigError(f"{t.key('dsn')}: must be a string, got {_show(queue.dsn)}")
    if queue.backend == "postgresql" and not queue.dsn:
        raise ConfigError(f'{t.key("dsn")}: required with queue.backend = "postgresql"')
    if queue.lease < 1.0:
        raise ConfigError(f"{t.key('lease')}: must be at least 1s, got {queue.lease:g}s")
    if queue.max_backoff < queue.min_backoff:
        raise ConfigError(
            f"{t.key('max_backoff')}: must not be shorter than queue.min_backoff "
            f"({queue.min_backoff:g}s), got {queue.max_backoff:g}s"
        )
    return queue


def _relay(t: _Table, base_dir: Path) -> RelaySection:
    host, port = _host_port(t.take("smarthost"), t.key("smarthost"), min_port=1, default_port=25)
    username = t.take("username", None)
    if username is not None:
        username = _str(username, t.key("username"))
    password_file = t.take("password_file", None)
    if password_file is not None:
        password_file = _path(password_file, t.key("password_file"), base_dir)
    tls = _choice(t.take("tls", "required"), t.key("tls"), RELAY_TLS_MODES)
    t.finish()
    if username is not None and password_file is None:
        raise ConfigError(f"{t.key('password_file')}: required when relay.username is set")
    if password_file is not None and username is None:
        raise ConfigError(f"{t.key('username')}: required when relay.password_file is set")
    return RelaySection(host, port, username, password_file, tls)


def _delivery(t: _Table) -> DeliverySection:
    mx_port = t.take("mx_port", 25)
    if isinstance(mx_port, bool) or not isinstance(mx_port, int) or not 1 <= mx_port <= 65535:
        raise ConfigError(f"{t.key('mx_port')}: must be a port from 1 to 65535, got {mx_port!r}")
    hosts_table = _Table(t.take("hosts", {}), t.key("hosts"))
    hosts: dict[str, tuple[tuple[str, int | None], ...]] = {}
    for name in hosts_table.names():
        key = hosts_table.key(name)
        targets = _list(hosts_table.take(name), key)
        parsed: list[tuple[str, int | None]] = []
        for i, target in enumerate(targets):
            if target == ".":  # RFC 7505 null MX
                parsed.append((".", None))
                continue
            host, port = _host_port(target, f"{key}[{i}]", min_port=1, default_port=0)
            parsed.append((host, port or None))
        hosts[_domain(name, key)] = tuple(parsed)
    section = DeliverySection(
        mx_port=mx_port,
        hosts=hosts,
        connect_timeout=parse_duration(t.take("connect_timeout", "30s"), t.key("connect_timeout")),
        command_timeout=parse_duration(t.take("command_timeout", "5m"), t.key("command_timeout")),
        destination_concurrency=_positive_int(
            t.take("destination_concurrency", 20), t.key("destination_concurrency")
        ),
        tls_verify=_bool(t.take("tls_verify", False), t.key("tls_verify")),
        max_received=_positive_int(t.take("max_received", 100), t.key("max_received")),
        dns=_bool(t.take("dns", True), t.key("dns")),
        direct=_count(t.take("direct", 16), t.key("direct")),
    )
    t.finish()
    return section


def _dns(t: _Table) -> DnsSection:
    value = t.take("nameservers", None)
    nameservers = None
    if value is not None:
        items = _list(value, t.key("nameservers"))
        if not items:
            raise ConfigError(
                f"{t.key('nameservers')}: must name at least one server, or be left out "
                "(the system's /etc/resolv.conf)"
            )
        nameservers = tuple(
            _nameserver(v, f"{t.key('nameservers')}[{i}]") for i, v in enumerate(items)
        )
    section = DnsSection(nameservers, parse_duration(t.take("timeout", "5s"), t.key("timeout")))
    t.finish()
    return section


def _nameserver(value: Any, key: str) -> tuple[str, int]:
    """An IP address, optionally with a port: "192.0.2.1", "192.0.2.1:5353", "::1",
    "[::1]:5353". A name would need DNS to be found, so it is refused."""
    text = _str(value, key)
    wanted = f'must be an IP address or "address:port" ("[::1]:53" for IPv6), got {text!r}'
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    try:
        host, port = _host_port(text, key, min_port=1)
    except ConfigError as exc:
        if "port must be" in str(exc):
            raise
        raise ConfigError(f"{key}: {wanted}") from None
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ConfigError(f"{key}: {wanted}") from None


def _dkim(t: _Table, data_dir: Path) -> DkimSection:
    entries = _list(t.take("sign", []), t.key("sign"))
    t.finish()
    signs: list[DkimSign] = []
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(entries):
        e = _Table(item, f"{t.key('sign')}[{index}]")
        domain = _domain(e.take("domain"), e.key("domain"))
        selector = _selector(e.take("selector"), e.key("selector"))
        key = _path(
            e.take("key", f"dkim/{domain}.{selector}.key"), e.key("key"), data_dir
        )
        e.finish()
        if (domain, selector) in seen:
            raise ConfigError(
                f"{e.key('selector')}: {selector!r} for {domain} is already "
                f"{t.key('sign')}[{seen[domain, selector]}]"
            )
        seen[domain, selector] = index
        signs.append(DkimSign(domain, selector, key))
    return DkimSection(tuple(signs))


def parse_domain(value: str, key: str) -> str:
    """A domain name as config keys hold it (lower-case IDNA); ConfigError names ``key``."""
    return _domain(value, key)


def parse_selector(value: str, key: str) -> str:
    """A DKIM selector; ConfigError names ``key``."""
    return _selector(value, key)


def _selector(value: Any, key: str) -> str:
    """A DKIM selector (RFC 6376 §3.1): dot-separated DNS labels."""
    text = _str(value, key).lower()
    if not all(_LABEL_RE.fullmatch(label) for label in text.split(".")):
        raise ConfigError(f"{key}: not a valid selector (letters, digits, '-', '.'): {value!r}")
    return text


def _policy(t: _Table) -> PolicySection:
    policy = PolicySection(
        vrfy=_choice(t.take("vrfy", "authenticated"), t.key("vrfy"), EXPOSURE_LEVELS),
        expn=_choice(t.take("expn", "authenticated"), t.key("expn"), EXPOSURE_LEVELS),
        strict_paths=_bool(t.take("strict_paths", False), t.key("strict_paths")),
        bare_lf=_choice(t.take("bare_lf", "normalize"), t.key("bare_lf"), BARE_LF_MODES),
    )
    t.finish()
    return policy


def _antispam(t: _Table) -> AntispamSection:
    sites = _list(t.take("dnsbl", []), t.key("dnsbl"))
    threshold = t.take("dnsbl_threshold", 1)
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ConfigError(f"{t.key('dnsbl_threshold')}: must be an integer, got {_show(threshold)}")
    greet_delay = t.take("greet_delay", "0s")
    delay = _delay(greet_delay, t.key("greet_delay"))
    if delay > _MAX_GREET_DELAY:
        raise ConfigError(f"{t.key('greet_delay')}: must be at most 5m, got {_show(greet_delay)}")
    section = AntispamSection(
        dnsbl=tuple(_dnsbl_site(v, f"{t.key('dnsbl')}[{i}]") for i, v in enumerate(sites)),
        dnsbl_threshold=threshold,
        pregreet=_choice(t.take("pregreet", "reject"), t.key("pregreet"), PREGREET_ACTIONS),
        greet_delay=delay,
        greylist=_bool(t.take("greylist", False), t.key("greylist")),
        greylist_delay=parse_duration(t.take("greylist_delay", "5m"), t.key("greylist_delay")),
        reject_unknown_sender_domain=_bool(
            t.take("reject_unknown_sender_domain", False), t.key("reject_unknown_sender_domain")
        ),
        reject_non_fqdn_helo=_bool(
            t.take("reject_non_fqdn_helo", False), t.key("reject_non_fqdn_helo")
        ),
    )
    t.finish()
    return section


def _delay(value: Any, key: str) -> float:
    """A duration that may be zero (``"0s"``: no delay)."""
    if isinstance(value, str) and value.strip().lower() in ("0", "0s", "0m", "0h", "0d"):
        return 0.0
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return parse_duration(value, key)


def _dnsbl_site(value: Any, key: str) -> DnsblSite:
    """postscreen's syntax: ``zone[=d.d.d.d][*weight]``, each ``d`` a number or a
    ``[n..m;k]`` list of numbers and ranges."""
    text = _str(value, key).strip()
    match = _DNSBL_RE.fullmatch(text)
    if match is None:
        raise ConfigError(
            f'{key}: expected "zone", "zone=127.0.0.[2..11]" or "zone*3", got {value!r}'
        )
    zone, pattern, weight = match.groups()
    octets: tuple[frozenset[int], ...] | None = None
    if pattern is not None:
        parts = _DNSBL_FILTER_RE.fullmatch(pattern)
        if parts is None:
            raise ConfigError(f"{key}: the answer filter needs four octets, got {pattern!r}")
        octets = tuple(_octet_values(part, key) for part in parts.groups())
    return DnsblSite(_domain(zone, key), octets, 1 if weight is None else int(weight))


def _octet_values(part: str, key: str) -> frozenset[int]:
    items = part[1:-1].split(";") if part.startswith("[") and part.endswith("]") else [part]
    values: set[int] = set()
    for item in items:
        found = _OCTET_ITEM_RE.fullmatch(item)
        low, high = (int(found[1]), int(found[2] or found[1])) if found else (0, -1)
        if found is None or not 0 <= low <= high <= 255:
            raise ConfigError(f"{key}: not an octet, a range n..m or a [list]: {part!r}")
        values.update(range(low, high + 1))
    return frozenset(values)


def _aliases(t: _Table, data_dir: Path) -> AliasesSection:
    aliases = AliasesSection(_path(t.take("file", "aliases"), t.key("file"), data_dir))
    t.finish()
    return aliases


def _log(t: _Table, data_dir: Path) -> LogSection:
    section = LogSection(
        target=_choice(t.take("target", "stderr"), t.key("target"), LOG_TARGETS),
        file=_path(t.take("file", str(DEFAULT_LOG_FILE)), t.key("file"), data_dir),
        format=_choice(t.take("format", "text"), t.key("format"), LOG_FORMATS),
    )
    t.finish()
    return section


def _users(t: _Table, queue: QueueSection) -> UsersSection:
    users = UsersSection(
        backend=_choice(t.take("backend", "file"), t.key("backend"), USERS_BACKENDS)
    )
    t.finish()
    if users.backend == "postgresql" and not queue.dsn:
        raise ConfigError(f'{t.key("backend")}: "postgresql" needs queue.dsn')
    return users


def _auth(t: _Table) -> AuthSection:
    mechanisms = _list(t.take("mechanisms", list(AUTH_MECHANISMS)), t.key("mechanisms"))
    auth = AuthSection(
        allow_plaintext_auth=_bool(
            t.take("allow_plaintext_auth", False), t.key("allow_plaintext_auth")
        ),
        mechanisms=tuple(
            _choice(
                str(m).upper() if isinstance(m, str) else m,
                f"{t.key('mechanisms')}[{i}]",
                AUTH_MECHANISMS,
            )
            for i, m in enumerate(mechanisms)
        ),
        sender_login_match=_bool(t.take("sender_login_match", True), t.key("sender_login_match")),
        max_failures=_positive_int(t.take("max_failures", 5), t.key("max_failures")),
        failure_window=parse_duration(t.take("failure_window", "10m"), t.key("failure_window")),
        lockout=parse_duration(t.take("lockout", "15m"), t.key("lockout")),
    )
    t.finish()
    return auth


def _authentication(t: _Table) -> AuthenticationSection:
    section = AuthenticationSection(
        checks=_bool(t.take("checks", True), t.key("checks")),
        dmarc_enforce=_bool(t.take("dmarc_enforce", True), t.key("dmarc_enforce")),
        spf_reject=_bool(t.take("spf_reject", False), t.key("spf_reject")),
    )
    t.finish()
    return section


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, got {_show(value)}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {_show(value)}")
    return value


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}: must be a positive integer, got {_show(value)}")
    return int(value)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}: must be an integer of 0 or more, got {_show(value)}")
    return int(value)


def _rate(value: Any, key: str) -> int:
    """A count per rate window: 0 (unlimited) up to what the rate table can count."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_RATE:
        raise ConfigError(
            f"{key}: must be an integer from 0 (unlimited) to {_MAX_RATE}, got {_show(value)}"
        )
    return int(value)


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be an array, got {_show(value)}")
    return value


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _absolute(path: Path) -> Path:
    """Absolute and normalised, without resolving symlinks the operator chose."""
    return Path(os.path.abspath(path.expanduser()))


def _path(value: Any, key: str, base_dir: Path) -> Path:
    return _absolute(base_dir / _str(value, key))


def _domain(value: Any, key: str) -> str:
    """Lower-case ASCII (IDNA) form, so comparisons with wire domains are exact."""
    name = _str(value, key).strip().lower().removesuffix(".")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if (
        not ascii_name
        or len(ascii_name) > 253
        or not all(_LABEL_RE.fullmatch(label) for label in ascii_name.split("."))
    ):
        raise ConfigError(f"{key}: not a valid domain name: {value!r}")
    return ascii_name


def _network(value: Any, key: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(_str(value, key), strict=False)
    except ValueError:
        raise ConfigError(f"{key}: not a valid CIDR network: {value!r}") from None


def _networks(t: _Table, name: str, default: list[str]) -> tuple[IPNetwork, ...]:
    values = _list(t.take(name, default), t.key(name))
    return tuple(_network(v, f"{t.key(name)}[{i}]") for i, v in enumerate(values))


def _host_port(
    value: Any, key: str, min_port: int, default_port: int | None = None
) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port"; IPv6 needs brackets so the port is unambiguous."""
    text = _str(value, key)
    port_text: str | None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{key}: not a bracketed IPv6 address: {text!r}") from None
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f'{key}: expected "[ipv6]:port", got {text!r}')
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, None
        if ":" in host:
            raise ConfigError(
                f'{key}: IPv6 addresses need brackets, as in "[::1]:2525", got {text!r}'
            )
        if not host:
            raise ConfigError(f'{key}: missing host in {text!r}, use "0.0.0.0:port" for all')
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            host = _domain(host, key)
    if port_text is None:
        if default_port is None:
            raise ConfigError(f'{key}: missing port, expected "host:port", got {text!r}')
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not (
        min_port <= int(port_text) <= 65535
    ):
        raise ConfigError(
            f"{key}: port must be a number from {min_port} to 65535, got {port_text!r}"
        )
    return host, int(port_text)
