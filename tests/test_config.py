"""What an operator sees of the config: defaults, durations, paths and error messages."""

from __future__ import annotations

import ipaddress
import socket
import textwrap
from pathlib import Path

import pytest

from petrel.config import (
    Config,
    ConfigError,
    Listener,
    default_connections,
    load_config,
    parse_duration,
)

FULL_EXAMPLE = """
[server]
hostname = "Mail.Example.TEST"
data_dir = "/var/spool/petrel"
reverse_dns = false
workers = 4

[[listener]]
address = "0.0.0.0:25"
mode = "smtp"

[[listener]]
address = "[::1]:2587"
mode = "submission"

[[listener]]
address = "127.0.0.1:24"
mode = "lmtp"

[tls]
cert = "/etc/petrel/fullchain.pem"
key = "/etc/petrel/privkey.pem"

[domains]
local = ["example.test", "Bücher.Example."]
relay_networks = ["192.0.2.0/24", "2001:db8::/32", "10.1.2.3"]

[limits]
message_size = 10000000
recipients = 50
connections = 200
connections_per_ip = 5
errors = 3
exempt_networks = ["192.0.2.7", "::1/128"]
command_timeout = "30s"
data_timeout = 120

[queue]
run_interval = "10m"
min_backoff = "1m"
max_backoff = "2h"
lifetime = "3d"
delay_warning = "1h30m"

[relay]
smarthost = "smtp.provider.example:587"
username = "petrel"
password_file = "/etc/petrel/relay-password"
tls = "opportunistic"

[policy]
vrfy = "off"
expn = "on"
strict_paths = true
bare_lf = "reject"

[aliases]
file = "/etc/petrel/aliases"
"""


def write(tmp_path: Path, text: str, name: str = "petrel.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


@pytest.fixture(autouse=True)
def fixed_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's FQDN varies between hosts; pin it so defaults are predictable."""
    monkeypatch.setattr(socket, "getfqdn", lambda *args: "MX1.Example.NET")


def test_no_config_file_runs_on_documented_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)

    assert config.source is None
    assert config.server.hostname == "mx1.example.net"
    assert config.server.data_dir == tmp_path / "petrel-data"
    assert config.server.reverse_dns is True
    assert config.server.workers == 1
    assert config.server.proxy_networks == (ipaddress.ip_network("127.0.0.0/8"),)
    assert not any(listener.proxy_protocol for listener in config.listeners)
    assert config.listeners == (
        Listener("127.0.0.1", 2525, "smtp"),
        Listener("127.0.0.1", 2587, "submission"),
        Listener("127.0.0.1", 2465, "submissions"),
        Listener("127.0.0.1", 8025, "http"),  # the web console, the API and /metrics
    )
    assert config.http.auth == "admins"
    assert config.tls.cert is None and config.tls.key is None
    assert config.domains.local == {"mx1.example.net", "localhost"}
    assert config.domains.relay_networks == ()
    assert config.domains.lmtp == {}
    limits = config.limits
    assert (limits.message_size, limits.recipients, limits.errors) == (20_000_000, 100, 10)
    assert (limits.connections, limits.connections_per_ip) == (default_connections(), 50)
    assert (limits.command_timeout, limits.data_timeout) == (300.0, 600.0)
    assert (limits.min_data_rate, limits.junk_commands) == (500, 100)
    assert (limits.tls_handshake_timeout, limits.tls_handshakes_per_ip) == (10.0, 10)
    assert limits.exempt_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    queue = config.queue
    assert queue.run_interval == 30 * 60
    assert (queue.min_backoff, queue.max_backoff) == (5 * 60, 60 * 60)
    assert queue.lifetime == 5 * 86400
    assert queue.delay_warning == 4 * 3600
    assert config.relay is None
    assert (config.policy.vrfy, config.policy.expn) == ("authenticated", "authenticated")
    assert config.policy.strict_paths is False
    assert config.policy.bare_lf == "normalize"
    assert config.aliases.file == tmp_path / "petrel-data" / "aliases"
    assert Config.default() == config


def test_empty_file_gives_defaults_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "", "etc/petrel.toml")
    config = load_config(path)
    assert config.source == path
    assert config.server.data_dir == tmp_path / "etc" / "petrel-data"
    assert len(config.listeners) == 4


def test_full_example_is_read_as_written(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL_EXAMPLE)

    assert config.server.hostname == "mail.example.test"
    assert config.server.data_dir == Path("/var/spool/petrel")
    assert config.server.reverse_dns is False
    assert config.server.workers == 4
    assert config.listeners == (
        Listener("0.0.0.0", 25, "smtp"),
        Listener("::1", 2587, "submission"),
        Listener("127.0.0.1", 24, "lmtp"),
    )
    assert config.tls.cert == Path("/etc/petrel/fullchain.pem")
    assert config.tls.key == Path("/etc/petrel/privkey.pem")
    assert config.domains.local == {"example.test", "xn--bcher-kva.example"}
    assert config.domains.relay_networks == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("10.1.2.3/32"),
    )
    assert config.limits.errors == 3
    assert config.limits.exempt_networks == (
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.policy.bare_lf == "reject"
    assert config.limits.connections == 200  # an explicit figure is kept exactly
    assert (config.limits.command_timeout, config.limits.data_timeout) == (30.0, 120.0)
    assert config.queue.delay_warning == 5400.0
    assert config.relay is not None
    assert (config.relay.smarthost_host, config.relay.smarthost_port) == (
        "smtp.provider.example",
        587,
    )
    assert config.relay.username == "petrel"
    assert config.relay.password_file == Path("/etc/petrel/relay-password")
    assert config.relay.tls == "opportunistic"
    assert (config.policy.vrfy, config.policy.expn, config.policy.strict_paths) == (
        "off",
        "on",
        True,
    )
    assert config.aliases.file == Path("/etc/petrel/aliases")


def test_hostname_given_becomes_a_local_domain(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[server]\nhostname = "mail.example.org"\n')
    assert config.domains.local == {"mail.example.org", "localhost"}


def test_explicit_local_domains_replace_the_default(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[domains]\nlocal = ["Example.ORG"]\n')
    assert config.domains.local == {"example.org"}


def test_workers_auto_means_one_per_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    assert load_text(tmp_path, '[server]\nworkers = "auto"\n').server.workers == 7


def test_relative_paths_follow_the_config_file_and_data_dir(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        data_dir = "../spool"
        [tls]
        cert = "tls/cert.pem"
        key = "tls/key.pem"
        [relay]
        smarthost = "relay.example.net:465"
        username = "u"
        password_file = "secret"
        [aliases]
        file = "maps/aliases"
        """,
        "etc/petrel.toml",
    )
    config = load_config(path)
    etc = tmp_path / "etc"
    assert config.server.data_dir == tmp_path / "spool"
    assert config.tls.cert == etc / "tls" / "cert.pem"
    assert config.tls.key == etc / "tls" / "key.pem"
    assert config.relay is not None
    assert config.relay.password_file == etc / "secret"
    assert config.aliases.file == tmp_path / "spool" / "maps" / "aliases"


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[server]\ndata_dir = "data"\n', "conf/petrel.toml")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/petrel.toml"))
    assert config.source == tmp_path / "conf" / "petrel.toml"
    assert config.server.data_dir == tmp_path / "conf" / "data"


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("[::1]:2525", "::1", 2525),
        ("[::]:25", "::", 25),
        ("0.0.0.0:25", "0.0.0.0", 25),
        ("localhost:2525", "localhost", 2525),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ],
)
def test_listener_addresses(tmp_path: Path, address: str, host: str, port: int) -> None:
    config = load_text(tmp_path, f'[[listener]]\naddress = "{address}"\nmode = "smtp"\n')
    assert config.listeners == (Listener(host, port, "smtp"),)


def test_smarthost_port_defaults_to_25_and_tls_to_required(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[relay]\nsmarthost = "[2001:db8::25]"\n')
    assert config.relay is not None
    assert (config.relay.smarthost_host, config.relay.smarthost_port) == ("2001:db8::25", 25)
    assert config.relay.tls == "required"
    assert config.relay.username is None and config.relay.password_file is None


def test_lmtp_routes_are_keyed_by_normalised_domain(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[domains.lmtp]\n"Example.TEST" = "127.0.0.1:24"\n')
    assert config.domains.lmtp == {"example.test": "127.0.0.1:24"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("4h", 14400.0),
        ("5d", 432000.0),
        ("1h30m", 5400.0),
        ("1d12h", 129600.0),
        ("0.5h", 1800.0),
        (" 10M ", 600.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value, "queue.lifetime") == seconds


@pytest.mark.parametrize("value", ["", "5x", "m", "5 m", "-5m", "h1", 0, -3, 0.0, True, [5]])
def test_parse_duration_rejects_with_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^queue\.lifetime: "):
        parse_duration(value, "queue.lifetime")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown names
        ("[server]\nhostnme = 'x'\n", "server.hostnme: unknown key"),
        # the shared queue
        ("[queue]\nbackend = 'mysql'\n", "queue.backend: must be one of spool, postgresql"),
        ("[queue]\nbackend = 'postgresql'\n", "queue.dsn: required with queue.backend"),
        ("[queue]\ndsn = 5\n", "queue.dsn: must be a string"),
        ("[queue]\nlease = '0s'\n", "queue.lease: must be"),
        ("[queue]\nnode = ''\n", "queue.node: must be a non-empty string"),
        ("[users]\nbackend = 'ldap'\n", "users.backend: must be one of file, postgresql"),
        ("[users]\nbackend = 'postgresql'\n", 'users.backend: "postgresql" needs queue.dsn'),
        ("[serevr]\n", "serevr: unknown section"),
        ("[domains.lmtp]\n'bad..domain' = 'x'\n", "domains.lmtp.bad..domain: not a valid domain"),
        # an LMTP target is a unix socket path or host:port, checked before mail waits on it
        ("[domains.lmtp]\n'b.test' = 'lmtp.b.test'\n", "domains.lmtp.b.test: missing port"),
        ("[domains.lmtp]\n'b.test' = 'run/lmtp'\n", "domains.lmtp.b.test: not a valid domain"),
        ("[domains.lmtp]\n'b.test' = 'h..x:24'\n", "domains.lmtp.b.test: not a valid domain"),
        ("[domains.lmtp]\n'b.test' = '::1:24'\n", "domains.lmtp.b.test: IPv6 addresses need"),
        (
            "[[listener]]\naddress = '127.0.0.1:25'\nmode = 'smtp'\nport = 25\n",
            "listener[0].port: unknown key",
        ),
        ("server = 5\n", "server: must be a table, got 5"),
        ("[authentication]\nchecks = 'yes'\n", "authentication.checks: must be true or false"),
        ("[authentication]\nspf_rejct = true\n", "authentication.spf_rejct: unknown key"),
        # types; bool is not an int
        ("[limits]\nerrors = -1\n", "limits.errors: must be a positive integer, got -1"),
        ("[limits]\nerrors = 0\n", "limits.errors: must be a positive integer, got 0"),
        (
            "[limits]\nrecipients = true\n",
            "limits.recipients: must be a positive integer, got True",
        ),
        ("[limits]\nmessage_size = '20MB'\n", "limits.message_size: must be a positive integer"),
        ("[limits]\nconnections = 1.5\n", "limits.connections: must be a positive integer"),
        ("[limits]\nmin_data_rate = 0\n", "limits.min_data_rate: must be a positive integer"),
        ("[limits]\njunk_commands = 'x'\n", "limits.junk_commands: must be a positive integer"),
        (
            "[limits]\ntls_handshakes_per_ip = -2\n",
            "limits.tls_handshakes_per_ip: must be a positive integer, got -2",
        ),
        (
            "[limits]\ntls_handshake_timeout = 'soon'\n",
            "limits.tls_handshake_timeout: must be a duration",
        ),
        ("[server]\nreverse_dns = 'no'\n", "server.reverse_dns: must be true or false, got 'no'"),
        ("[server]\nworkers = 0\n", 'server.workers: must be a positive integer or "auto"'),
        ("[server]\nworkers = 'many'\n", "server.workers: must be a positive integer or"),
        ("[server]\nhostname = 5\n", "server.hostname: must be a non-empty string, got 5"),
        ("[server]\nhostname = 'mail_1.example'\n", "server.hostname: not a valid domain name"),
        ("[server]\ndata_dir = ''\n", "server.data_dir: must be a non-empty string"),
        ("[domains]\nlocal = 'example.test'\n", "domains.local: must be an array"),
        ("[domains]\nlocal = ['ok.test', 'bad domain']\n", "domains.local[1]: not a valid domain"),
        ("[policy]\nstrict_paths = 1\n", "policy.strict_paths: must be true or false, got 1"),
        (
            "[policy]\nbare_lf = 'accept'\n",
            "policy.bare_lf: must be one of normalize, reject, got 'accept'",
        ),
        ("[policy]\nbare_lf = true\n", "policy.bare_lf: must be one of normalize, reject"),
        ("[limits]\nexempt_networks = ['lo']\n", "limits.exempt_networks[0]: not a valid CIDR"),
        ("[limits]\nexempt_networks = '::1'\n", "limits.exempt_networks: must be an array"),
        ("[aliases]\nfile = 3\n", "aliases.file: must be a non-empty string, got 3"),
        # choices
        (
            "[[listener]]\naddress = '127.0.0.1:25'\nmode = 'smpt'\n",
            "listener[0].mode: must be one of smtp, submission, submissions, lmtp, http,"
            " got 'smpt'",
        ),
        ("[policy]\nvrfy = 'yes'\n", "policy.vrfy: must be one of off, authenticated, on"),
        ("[policy]\nexpn = true\n", "policy.expn: must be one of off, authenticated, on"),
        (
            "[relay]\nsmarthost = 'r.example:25'\ntls = 'maybe'\n",
            "relay.tls: must be one of required, opportunistic, got 'maybe'",
        ),
        # listeners and addresses
        ("[listener]\naddress = '127.0.0.1:25'\nmode = 'smtp'\n", "listener: must be an array"),
        ("listener = []\n", "listener: at least one"),
        ("[[listener]]\nmode = 'smtp'\n", "listener[0].address: required"),
        ("[[listener]]\naddress = '127.0.0.1:25'\n", "listener[0].mode: required"),
        (
            "[[listener]]\naddress = '127.0.0.1'\nmode = 'smtp'\n",
            "listener[0].address: missing port",
        ),
        (
            "[[listener]]\naddress = '127.0.0.1:99999'\nmode = 'smtp'\n",
            "listener[0].address: port must be a number from 0 to 65535",
        ),
        (
            "[[listener]]\naddress = '127.0.0.1:smtp'\nmode = 'smtp'\n",
            "listener[0].address: port must be a number",
        ),
        (
            "[[listener]]\naddress = '::1:2525'\nmode = 'smtp'\n",
            "listener[0].address: IPv6 addresses need brackets",
        ),
        (
            "[[listener]]\naddress = '[::g]:2525'\nmode = 'smtp'\n",
            "listener[0].address: not a bracketed IPv6 address",
        ),
        ("[[listener]]\naddress = '[::1]2525'\nmode = 'smtp'\n", "listener[0].address: expected"),
        ("[[listener]]\naddress = ':25'\nmode = 'smtp'\n", "listener[0].address: missing host"),
        ("[[listener]]\naddress = 25\nmode = 'smtp'\n", "listener[0].address: must be a non-empty"),
        (
            "[[listener]]\naddress = '127.0.0.1:25'\nmode = 'smtp'\n"
            "[[listener]]\naddress = '127.0.0.1:25'\nmode = 'lmtp'\n",
            "listener[1].address: same address as listener[0]",
        ),
        # CIDRs
        (
            "[domains]\nrelay_networks = ['10.0.0.0/33']\n",
            "domains.relay_networks[0]: not a valid CIDR network: '10.0.0.0/33'",
        ),
        ("[domains]\nrelay_networks = ['lan']\n", "domains.relay_networks[0]: not a valid CIDR"),
        ("[domains]\nrelay_networks = '10.0.0.0/8'\n", "domains.relay_networks: must be an array"),
        ("[server]\nproxy_networks = ['lb']\n", "server.proxy_networks[0]: not a valid CIDR"),
        (
            "[[listener]]\naddress = '127.0.0.1:25'\nmode = 'smtp'\nproxy_protocol = 'yes'\n",
            "listener[0].proxy_protocol: must be true or false",
        ),
        # the http listeners
        ("[http]\nauth = 'basic'\n", "http.auth: must be one of admins, none, got 'basic'"),
        ("[http]\nrealm = 'x'\n", "http.realm: unknown key"),
        (
            "[[listener]]\naddress = '127.0.0.1:80'\nmode = 'http'\nproxy_protocol = true\n",
            'listener[0].proxy_protocol: not supported with mode = "http"',
        ),
        (
            "[http]\nauth = 'none'\n[[listener]]\naddress = '[::]:8025'\nmode = 'http'\n",
            'http.auth: "none" is allowed only when every http listener is on loopback;'
            " listener[0] is [::]:8025",
        ),
        # durations
        ("[limits]\ncommand_timeout = '5 minutes'\n", "limits.command_timeout: must be a duration"),
        ("[limits]\ndata_timeout = 0\n", "limits.data_timeout: must be a positive duration"),
        ("[queue]\nlifetime = nan\n", "queue.lifetime: must be a positive duration"),
        (
            "[queue]\nmin_backoff = '2h'\nmax_backoff = '1h'\n",
            "queue.max_backoff: must not be shorter than queue.min_backoff",
        ),
        # pairs that only make sense together
        ("[tls]\ncert = 'c.pem'\n", "tls.key: required when tls.cert is set"),
        ("[tls]\nkey = 'k.pem'\n", "tls.cert: required when tls.key is set"),
        ("[relay]\ntls = 'required'\n", "relay.smarthost: required"),
        ("[relay]\nsmarthost = 'r.example:0'\n", "relay.smarthost: port must be a number from 1"),
        (
            "[relay]\nsmarthost = 'r.example:587'\nusername = 'u'\n",
            "relay.password_file: required when relay.username is set",
        ),
        (
            "[relay]\nsmarthost = 'r.example:587'\npassword_file = 'p'\n",
            "relay.username: required when relay.password_file is set",
        ),
    ],
)
def test_every_error_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value).startswith(message)


def test_the_shared_queue_keys_and_their_defaults(tmp_path: Path) -> None:
    default = load_text(tmp_path, "")
    assert (default.queue.backend, default.queue.lease, default.users.backend) == (
        "spool",
        600.0,
        "file",
    )
    assert default.queue.node == default.server.hostname
    shared = load_text(
        tmp_path,
        "[queue]\nbackend = 'postgresql'\ndsn = 'postgresql://petrel@127.0.0.1/petrel'\n"
        "node = 'mx2'\nlease = '3s'\n[users]\nbackend = 'postgresql'\n",
    )
    assert (shared.queue.node, shared.queue.lease, shared.users.backend) == (
        "mx2",
        3.0,
        "postgresql",
    )


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nhostname = 'x'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: invalid TOML: ")
    assert "line 1" in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path)


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_text(tmp_path, "")
    with pytest.raises(AttributeError):
        config.limits.errors = 99  # type: ignore[misc]


def test_auth_section_defaults_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text("")
    auth = load_config(path).auth
    assert (auth.allow_plaintext_auth, auth.max_failures, auth.lockout) == (False, 5, 900.0)
    assert auth.mechanisms == ("PLAIN", "LOGIN", "SCRAM-SHA-256")
    path.write_text('[auth]\nmechanisms = ["plain"]\nallow_plaintext_auth = true\n')
    assert load_config(path).auth.mechanisms == ("PLAIN",)
    path.write_text('[auth]\nmechanisms = ["CRAM-MD5"]\n')
    with pytest.raises(ConfigError, match=r"^auth\.mechanisms\[0\]: must be one of"):
        load_config(path)
    path.write_text("[auth]\nmax_failures = 0\n")
    with pytest.raises(ConfigError, match=r"^auth\.max_failures:"):
        load_config(path)


@pytest.mark.parametrize(
    ("hard", "expected"),
    [(1024, 384), (20_000, 9872), (524_288, 50_000), (-1, 50_000)],
)
def test_default_connections_follow_the_fd_limit(
    monkeypatch: pytest.MonkeyPatch, hard: int, expected: int
) -> None:
    """Half the descriptors left after the reserve, capped; RLIM_INFINITY is -1 on Linux."""
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, hard))
    assert default_connections() == expected
    assert Config.default().limits.connections == expected


def test_proxy_protocol_listener_and_networks(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[server]\nproxy_networks = ['10.0.0.0/24', '2001:db8::/32']\n"
        "[[listener]]\naddress = '0.0.0.0:25'\nmode = 'smtp'\nproxy_protocol = true\n"
        "[[listener]]\naddress = '0.0.0.0:465'\nmode = 'submissions'\n",
    )
    assert config.server.proxy_networks == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert config.listeners == (
        Listener("0.0.0.0", 25, "smtp", proxy_protocol=True),
        Listener("0.0.0.0", 465, "submissions"),
    )


def test_http_auth_none_is_allowed_on_loopback(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[http]\nauth = 'none'\n"
        "[[listener]]\naddress = '127.0.0.1:8025'\nmode = 'http'\n"
        "[[listener]]\naddress = '[::1]:8026'\nmode = 'http'\n"
        "[[listener]]\naddress = 'localhost:8027'\nmode = 'http'\n"
        "[[listener]]\naddress = '0.0.0.0:25'\nmode = 'smtp'\n",  # SMTP may be anywhere
    )
    assert config.http.auth == "none"
    assert [listener.mode for listener in config.listeners] == ["http", "http", "http", "smtp"]
