"""``petrel alias add|del|list|import``: the aliases of the shared database.

With ``[users] backend = "postgresql"`` the aliases are the ``petrel_alias`` table and
these commands write it (every node sees a change within `pg_aliases.REFRESH` seconds).
With the file backend the aliases file is the one place to edit: ``list`` reads it,
the others say so and exit 1. Exit status: 0 done, 1 refused (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from petrel.config import Config
from petrel.policy.aliases import AliasError, check_entry, open_aliases, parse_file

__all__ = ["add_parser", "run"]


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    alias = sub.add_parser(
        "alias",
        parents=[common],
        help="manage the aliases of the shared database ([users] backend = \"postgresql\")",
        description=(
            "Aliases in the shared PostgreSQL database, expanded by every node. With the"
            " file backend, edit the aliases file instead (`list` shows it)."
        ),
    )
    actions = alias.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", parents=[common], help="add an alias: NAME (local or local@domain) TARGET…"
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("targets", nargs="+", metavar="TARGET")
    remove = actions.add_parser("del", parents=[common], help="delete an alias")
    remove.add_argument("name", metavar="NAME")
    actions.add_parser(
        "list", parents=[common], help="the aliases, in the aliases file's format"
    )
    load = actions.add_parser(
        "import", parents=[common], help="add every entry of an aliases FILE (all or none)"
    )
    load.add_argument("file", type=Path, metavar="FILE")
    load.add_argument(
        "--replace", action="store_true", help="make the table exactly the file's entries"
    )


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        return _run(config, args)
    except (AliasError, OSError) as exc:  # OSError: the database out of reach, a file
        print(f"petrel: {exc}", file=sys.stderr)
        return 1


def _run(config: Config, args: argparse.Namespace) -> int:
    action = args.alias_command
    if action != "list" and config.users.backend != "postgresql":
        print(
            f"petrel: aliases are kept in {config.aliases.file} ([users] backend = \"file\"):"
            " edit that file; the server re-reads it when it changes",
            file=sys.stderr,
        )
        return 1
    if action == "list":
        table = open_aliases(config)
        entries = table.items()
        for name, targets in entries:
            print(f"{name}: {', '.join(targets)}")
        if not entries:  # stderr, so `petrel alias list > file` stays an empty file
            print(f"petrel: no aliases in {table.source}", file=sys.stderr)
        return 0
    from petrel.policy.pg_aliases import shared_aliases

    if action == "add":
        key, _ = check_entry(args.name, args.targets)  # refused before any connection
        _warn_if_not_local(key, config)
        shared_aliases(config.queue.dsn).add(key, args.targets)
        print(f"petrel: alias {key} added")
    elif action == "del":
        print(f"petrel: alias {shared_aliases(config.queue.dsn).delete(args.name)} deleted")
    else:
        parsed = parse_file(args.file)  # a broken file is refused before any connection
        count = shared_aliases(config.queue.dsn).import_entries(parsed, replace=args.replace)
        print(f"petrel: {count} aliases imported from {args.file}")
    return 0


def _warn_if_not_local(key: str, config: Config) -> None:
    """A key for a domain that is not local is never looked up: say so, as user add does."""
    _, at, domain = key.rpartition("@")
    if at and domain not in config.domains.local:
        print(
            f"petrel: warning: {domain} is not a local domain: mail to {key} is not"
            " alias-expanded here",
            file=sys.stderr,
        )
