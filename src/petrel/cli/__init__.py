"""The ``petrel`` command: argument parsing only; the work lives in the library."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from petrel import __version__
from petrel.config import Config, ConfigError, default_config_path, load_config
from petrel.log import FORMATS, LEVELS, LogSetupError, set_process_field, setup_logging
from petrel.policy.aliases import AliasError, Aliases
from petrel.policy.users import UserError

from . import aliases, dkim, queue

CONFIG_HELP = (
    "TOML configuration file (default: $PETREL_CONFIG, else /etc/petrel/petrel.toml"
    " if it exists, else embedded defaults)"
)


def _parser() -> argparse.ArgumentParser:
    # --config may stand before the command, after it, or after the action: every parser
    # knows it, and only the top one has a default. SUPPRESS keeps a subparser from
    # overwriting a value given further left with a default of its own.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
    parser = argparse.ArgumentParser(prog="petrel", description="Petrel, an ESMTP mail server.")
    parser.add_argument("--version", action="version", version=f"petrel {__version__}")
    parser.add_argument(
        "--config", type=Path, default=None, help=CONFIG_HELP
    )  # None: default_config_path(), looked up once the command is known
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the listeners and the queue manager",
        description=(
            "Run Petrel in the foreground: the SMTP/LMTP listeners, the queue manager and "
            "the control socket. Logs go to [log] target (default stderr). SIGTERM/SIGINT "
            "stop it (sessions finish or get 421), SIGHUP re-reads the configuration and "
            "the TLS certificate (petrel reload), SIGUSR1 reopens the log file."
        ),
    )
    serve.add_argument(
        "--log-format",
        choices=FORMATS,
        default=None,
        help="key=value text or one JSON object a line (default: [log] format, else text)",
    )
    serve.add_argument(
        "--log-level",
        choices=list(LEVELS),
        default="info",
        help="the least severe lines written (default: info)",
    )
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # server.workers > 1
    sub.add_parser("check-config", parents=[common], help="validate the configuration")
    sub.add_parser(
        "reload",
        parents=[common],
        help="make the running server re-read its configuration and TLS certificate (SIGHUP)",
    )
    status = sub.add_parser(
        "status", parents=[common], help="show what the running server is doing"
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    user = sub.add_parser("user", parents=[common], help="manage the users who may AUTH")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    for action, text in (("add", "add a user"), ("passwd", "change a user's password")):
        p = user_sub.add_parser(action, parents=[common], help=text)
        p.add_argument("address", metavar="ADDRESS")
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input",
        )
        if action == "add":
            p.add_argument(
                "--admin",
                action="store_true",
                help="may also use the web console and the HTTP API ([http] auth = admins)",
            )
    p = user_sub.add_parser(
        "token",
        parents=[common],
        help="make a new HTTP API token for an admin (printed once; replaces the old one)",
    )
    p.add_argument("address", metavar="ADDRESS")
    p = user_sub.add_parser("del", parents=[common], help="delete a user")
    p.add_argument("address", metavar="ADDRESS")
    user_sub.add_parser("list", parents=[common], help="list the users")
    db = sub.add_parser(
        "db",
        parents=[common],
        help="the shared PostgreSQL queue's schema ([queue] backend = \"postgresql\")",
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser(
        "migrate",
        parents=[common],
        help="create or upgrade the schema in [queue] dsn (idempotent; run once per upgrade)",
    )
    from petrel.cli import send as send_cli

    send_cli.add_parser(sub)
    sub.add_parser(  # parsed by petrel.cli.sendmail: sendmail(1) syntax is not argparse's
        "sendmail", help="queue a message from stdin (sendmail-compatible: -t -i -f -F)"
    )
    queue.add_parser(sub, common)
    aliases.add_parser(sub, common)
    dkim.add_parser(sub, common)
    return parser


def _read_password(from_stdin: bool) -> str:
    """One line from stdin (scripts), else asked twice without echo (people)."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not _have_terminal():
            raise UserError("no terminal to ask for the password: pipe it in with --password-stdin")
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                raise UserError("the passwords differ")
        except EOFError:
            raise UserError("no password given (end of input)") from None
    if not password:
        raise UserError("empty password")
    return password


def _have_terminal() -> bool:
    """Can getpass ask without echo? It uses /dev/tty, else a terminal on stdin."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return sys.stdin.isatty()
    return True


def _user_address(name: str, config: Config) -> str:
    """A bare login name means ``name@<hostname>``, as it does for AUTH."""
    from petrel.policy.users import normalize_address

    return normalize_address(name if "@" in name else f"{name}@{config.server.hostname}")


def _user(args: argparse.Namespace, config: Config) -> int:
    from petrel.policy.users import open_users
    from petrel.privileges import act_as_data_dir_owner

    act_as_data_dir_owner(config)  # as root: `users` must stay readable to the server
    users = open_users(config)
    action = args.user_command
    if action == "list":
        listed = list(users)
        for user in listed:
            print(f"{user.address} (admin)" if user.admin else user.address)
        if not listed:  # which store was empty: stderr, so scripts still read nothing
            print(f"petrel: no users in {users.path}", file=sys.stderr)
        return 0
    # Everything that can be refused is refused before the password is asked for.
    address = _user_address(args.address, config)
    known = users.get(address) is not None
    if action == "add" and known:
        raise UserError(f"{address}: user exists (use 'petrel user passwd')")
    if action != "add" and not known:
        raise UserError(f"{address}: no such user")
    if action == "del":
        users.delete(address)
        print(f"petrel: {address}: user deleted")
        return 0
    if action == "token":  # stdout holds the token alone: TOKEN=$(petrel user token a@b)
        print(users.new_token(address))
        return 0
    if action == "add":
        domain = address.rpartition("@")[2]
        if domain not in config.domains.local and domain not in config.domains.lmtp:
            # Postfix-style: a warning, not a refusal. Such a user can still AUTH and
            # send as the address (a submission-only account); mail to it is relayed.
            print(
                f"petrel: warning: {domain} is not a local or LMTP domain: {address} may"
                " log in and send, but mail to it is not delivered here",
                file=sys.stderr,
            )
        users.add(address, _read_password(args.password_stdin), admin=args.admin)
        print(f"petrel: {address}: {'admin' if args.admin else 'user'} added")
    else:
        users.set_password(address, _read_password(args.password_stdin))
        print(f"petrel: {address}: password changed")
    return 0


def _db_migrate(config: Config) -> int:
    """``petrel db migrate``: bring [queue] dsn's schema to this Petrel's version."""
    if not config.queue.dsn:
        print('petrel: queue.dsn: required for petrel db migrate', file=sys.stderr)
        return 2
    try:
        from petrel.queue.pg import SchemaError, migrate
    except ImportError as exc:
        print(f"petrel: db migrate needs psycopg ({exc}): install petrel[postgresql]",
              file=sys.stderr)
        return 1
    try:
        before, after = migrate(config.queue.dsn)
    except (OSError, SchemaError) as exc:
        print(f"petrel: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"petrel: database schema is at version {after}; nothing to do")
    else:
        print(f"petrel: database schema migrated from version {before} to {after}")
    return 0


def _reload(config: Config) -> int:
    """SIGHUP the ``petrel serve`` named by ``<data_dir>/petrel.pid``, if it is one."""
    from petrel.pidfile import PidFileError, running_pid

    try:
        pid = running_pid(config.server.data_dir)
        os.kill(pid, signal.SIGHUP)
    except (PidFileError, OSError) as exc:
        print(f"petrel: {exc}", file=sys.stderr)
        return 1
    print(f"petrel: reload requested (SIGHUP to pid {pid})")
    return 0


def _status(config: Config, as_json: bool) -> int:
    """Ask the running server over its control socket; exit 1 in one line without one."""
    import json

    from petrel.server.control import ControlClient, ControlError, control_path
    from petrel.status import format_status

    data_dir = config.server.data_dir
    client = ControlClient(control_path(data_dir), timeout=10.0)
    try:
        if not client.connect():
            print(f"petrel: no server is running on {data_dir}", file=sys.stderr)
            return 1
        response = client.request("status")
    except ControlError as exc:
        print(f"petrel: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    info = response.get("status")
    if response.get("ok") is not True or not isinstance(info, dict):
        print(f"petrel: status: {response.get('message', 'refused')}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if as_json else format_status(info))
    return 0


def _load(path: Path | None) -> Config:
    config = load_config(path)
    if config.users.backend == "file":  # the shared database's table is checked row by row
        Aliases.load(config.aliases.file)  # a broken aliases file is a configuration error
    return config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.path.basename(sys.argv[0]) == "sendmail" or argv[:1] == ["sendmail"]:
        from petrel.cli import sendmail as sendmail_cli  # installed as `sendmail` too

        return sendmail_cli.main(argv[1:] if argv[:1] == ["sendmail"] else argv)
    args = _parser().parse_args(argv)
    if args.command == "send":  # a client for any server: no configuration needed
        from petrel.cli import send as send_cli

        return send_cli.run(args)
    try:
        config = _load(args.config if args.config is not None else default_config_path())
    except (ConfigError, AliasError) as exc:
        print(f"petrel: {exc}", file=sys.stderr)
        return 2
    if args.command == "user":
        try:
            return _user(args, config)
        except (UserError, OSError) as exc:  # OSError: a users database out of reach
            print(f"petrel: {exc}", file=sys.stderr)
            return 1
    if args.command == "queue":
        return queue.run(config, args)
    if args.command == "alias":
        return aliases.run(config, args)
    if args.command == "db":
        return _db_migrate(config)
    if args.command == "dkim":
        return dkim.run(config, args)
    if args.command == "reload":
        return _reload(config)
    if args.command == "status":
        return _status(config, args.json)
    if args.command in ("serve", "check-config") and getattr(args, "worker", None) is None:
        from petrel.dkim import Signer
        from petrel.server.tls import TlsError, check_configured_pair

        try:
            check_configured_pair(config)  # a typo in a path: one line, before any start-up
            Signer.load(config.dkim)  # the same for a DKIM key
        except (TlsError, ConfigError) as exc:
            print(f"petrel: {exc}", file=sys.stderr)
            return 2
    if args.command == "check-config":
        source = config.source or "embedded defaults"
        print(f"petrel: configuration OK ({source})")
        return 0
    log_format = args.log_format or config.log.format  # the flag wins over [log] format
    log_file = config.log.file
    if config.log.target == "file" and log_file.is_relative_to(config.server.data_dir):
        try:  # data_dir's own mode, as serve makes it (it is not there on a first start)
            log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            print(
                f"petrel: log.file: cannot make {log_file.parent}: {exc.strerror}", file=sys.stderr
            )
            return 1
    try:
        setup_logging(log_format, args.log_level, config.log.target, log_file)
    except LogSetupError as exc:  # log.file: cannot open ...
        print(f"petrel: {exc}", file=sys.stderr)
        return 1
    from petrel.app import run, serve, serve_worker
    from petrel.policy.decoy import DecoyError
    from petrel.server.tls import TlsError

    try:
        if args.worker is not None:
            set_process_field("worker", args.worker)
            return run(serve_worker(config, args.worker))
        log_args = ["--log-format", log_format, "--log-level", args.log_level]
        return run(serve(config, log_args))
    except (OSError, DecoyError, TlsError) as exc:  # at start-up: a listener, a data_dir file
        print(f"petrel: {exc}", file=sys.stderr)
        return 1
