"""``petrel queue list|show|flush|delete|hold|release``: mailq and postsuper in one.

The running server is asked over its control socket; when none answers, the
same operations run on the stopped spool (`petrel.queue.admin.SpoolAdmin`).
Exit status: 0 done, 1 no such message (or it could not be read), 2 usage,
configuration or control-socket trouble.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from petrel.config import Config
from petrel.privileges import act_as_data_dir_owner
from petrel.queue.admin import execute, format_list, format_show, spool_admin
from petrel.server.control import ControlClient, ControlError, control_path

__all__ = ["add_parser", "run"]


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    # ``common`` gives --config with a SUPPRESS default (petrel.cli._parser): it may
    # come before or after the action.
    queue = sub.add_parser(
        "queue",
        parents=[common],
        help="show and control the mail queue (works with or without a running server)",
        description="Show and control the mail queue. `petrel queue [list]` is mailq.",
    )
    actions = queue.add_subparsers(dest="action", metavar="ACTION")
    queue.set_defaults(action="list")  # `petrel queue` alone is mailq
    actions.add_parser("list", parents=[common], help="the queue, mailq style")
    show = actions.add_parser("show", parents=[common], help="one message: envelope and headers")
    show.add_argument("id", metavar="ID")
    flush = actions.add_parser(
        "flush",
        parents=[common],
        help="try deferred mail now (for DOMAIN only, @DOMAIN: subdomains)",
    )
    flush.add_argument("domain", nargs="?", metavar="DOMAIN")
    delete = actions.add_parser(
        "delete", parents=[common], help="remove a message (ALL: every one)"
    )
    delete.add_argument("id", metavar="ID|ALL")
    hold = actions.add_parser("hold", parents=[common], help="stop delivering a message")
    hold.add_argument("id", metavar="ID")
    release = actions.add_parser("release", parents=[common], help="undo hold")
    release.add_argument("id", metavar="ID")


def run(config: Config, args: argparse.Namespace) -> int:
    act_as_data_dir_owner(config)  # as root: the stopped spool's files stay the server's
    data_dir = config.server.data_dir
    request: dict[str, Any] = {"op": args.action}
    if getattr(args, "id", None) is not None:
        request["id"] = args.id.upper()  # ids are upper-case; "all" means ALL too
    if getattr(args, "domain", None) is not None:
        request["domain"] = args.domain
    if config.queue.backend == "postgresql":
        response, live = _ask_shared(config, request), True
    else:
        client = ControlClient(control_path(data_dir))
        try:
            live = client.connect()
            # No server: the same request, answered from the spool files.
            response = (
                client.request(**request) if live else execute(spool_admin(data_dir), request)
            )
        except ControlError as exc:
            print(f"petrel: control socket: {exc}", file=sys.stderr)
            return 2
        finally:
            client.close()
    if not response.get("ok"):
        print(f"petrel: {response.get('message', 'request failed')}", file=sys.stderr)
        return 2 if response.get("error") == "bad-request" else 1
    _print(args.action, request, response, live, data_dir)
    return 0


def _ask_shared(config: Config, request: dict[str, Any]) -> dict[str, Any]:
    """A shared queue: the request runs on the database itself, for the whole cluster
    (every node's leases included), whether or not a server runs here."""
    from petrel.delivery.cluster import ClusterAdmin
    from petrel.queue.pg import SchemaError, open_store

    try:
        store = open_store(config)
    except (OSError, SchemaError) as exc:
        return {"ok": False, "error": "failed", "message": str(exc)}
    try:
        return execute(ClusterAdmin(store), request)
    finally:
        store.close()


def _print(
    action: str, request: dict[str, Any], response: dict[str, Any], live: bool, data_dir: Path
) -> None:
    queue_id = request.get("id")
    if action == "list":
        sys.stdout.write(format_list(response["messages"], data_dir))
    elif action == "show":
        sys.stdout.write(format_show(response["message"]))
    elif action == "flush":
        count = response["count"]
        when = "now" if live else "when the server starts"
        print(f"petrel: {count} message{'s' if count != 1 else ''} to be tried {when}")
    elif action == "delete":
        for one in response["removed"]:
            print(f"petrel: {one}: removed")
        for one in response["pending"]:
            print(f"petrel: {one}: removed when its delivery attempt in progress ends")
        if queue_id == "ALL":
            count = len(response["removed"]) + len(response["pending"])
            print(f"petrel: Deleted: {count} message{'s' if count != 1 else ''}")
    elif action == "hold":
        print(
            f"petrel: {queue_id}: {'placed on hold' if response['changed'] else 'already on hold'}"
        )
    elif action == "release":
        print(
            f"petrel: {queue_id}: {'released from hold' if response['changed'] else 'not on hold'}"
        )
