"""``petrel send``: argument parsing; the session lives in `petrel.client.send`."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from pathlib import Path

from petrel.client.message import build_message
from petrel.client.send import (
    EXIT_HELP,
    STAGES,
    Exit,
    SendOptions,
    default_port,
    join_recipients,
    send,
    split_server,
    valid_notify,
)
from petrel.client.transcript import Transcript, use_colour

__all__ = ["add_parser", "run"]

_EXAMPLE = """\
example:
  petrel send --server 127.0.0.1:2525 --from darth.vader@deathstar.com \\
      --to willie@example.com --subject "Great article" --body "Hi Willie,"
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send",
        help="send a message to any SMTP/LMTP server and print the conversation",
        description="An SMTP client for testing mail servers: the conversation is printed "
        "as S:/C: lines, like a telnet session typed by hand.",
        epilog=_EXAMPLE + "\n" + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        help="default localhost; port 25, or 465 with --tls, 24 with --lmtp"
        " (`make serve` listens on 127.0.0.1:2525: --server 127.0.0.1:2525)",
    )
    p.add_argument("--from", dest="sender", metavar="ADDRESS", help="envelope sender")
    p.add_argument(
        "--to", action="append", default=[], metavar="ADDRESS", help="recipient (repeatable)"
    )
    p.add_argument("--helo", metavar="NAME", help="EHLO/LHLO argument (default: this host)")
    p.add_argument("--lmtp", action="store_true", help="speak LMTP (RFC 2033): LHLO, per-rcpt")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--starttls", action="store_const", const="required", help="STARTTLS, fail without it"
    )
    tls.add_argument(
        "--starttls-optional",
        dest="starttls",
        action="store_const",
        const="optional",
        help="STARTTLS when offered",
    )
    tls.add_argument("--tls", action="store_true", help="implicit TLS from the first byte")
    p.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    p.add_argument("--ca", metavar="FILE", help="trust the CA certificates in FILE")
    p.add_argument(
        "--auth",
        metavar="MECH",
        type=str.upper,
        choices=["PLAIN", "LOGIN", "SCRAM-SHA-256", "AUTO"],
        help="PLAIN, LOGIN, SCRAM-SHA-256 or auto (the best offered)",
    )
    p.add_argument("--user", metavar="NAME", help="AUTH user name (implies --auth auto)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (else a prompt)",
    )
    msg = p.add_argument_group("message")
    msg.add_argument("--data", metavar="FILE", help="send FILE (or - for stdin) as it is")
    msg.add_argument("--subject", help="Subject of a built message")
    msg.add_argument("--body", help="body text of a built message")
    msg.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="repeatable"
    )
    msg.add_argument(
        "--attach", action="append", default=[], type=Path, metavar="FILE", help="repeatable"
    )
    ext = p.add_argument_group("ESMTP")
    ext.add_argument("--pipeline", action="store_true", help="use PIPELINING when offered")
    ext.add_argument("--notify", metavar="LIST", help="DSN NOTIFY: NEVER or SUCCESS,FAILURE,DELAY")
    ext.add_argument("--ret", type=str.upper, choices=["FULL", "HDRS"], help="DSN RET")
    ext.add_argument("--envid", metavar="ID", help="DSN ENVID")
    ext.add_argument("--size", action="store_true", help="announce SIZE= on MAIL")
    ext.add_argument("--8bitmime", dest="eightbitmime", action="store_true", help="BODY=8BITMIME")
    ext.add_argument("--smtputf8", action="store_true", help="SMTPUTF8 on MAIL")
    out = p.add_argument_group("output")
    out.add_argument(
        "--quit-after", choices=STAGES, metavar="STAGE", help=f"stop after: {', '.join(STAGES)}"
    )
    out.add_argument("--timeout", type=float, default=30.0, help="seconds per read (default 30)")
    out.add_argument(
        "--data-lines",
        type=int,
        default=40,
        metavar="N",
        help="message lines shown in the transcript (default 40, 0 = all)",
    )
    out.add_argument("--quiet", "-q", action="store_true", help="no transcript, only errors")
    out.add_argument("--json", action="store_true", help="print a JSON summary instead")


def _fail(message: str) -> int:
    print(f"petrel send: {message}", file=sys.stderr)
    return Exit.LOCAL


def run(args: argparse.Namespace) -> int:
    """Build the options, run the session, report."""
    lmtp, implicit = args.lmtp, args.tls
    try:
        host, port = split_server(
            args.server or "localhost", default_port(lmtp=lmtp, implicit_tls=implicit)
        )
    except ValueError as exc:
        return _fail(str(exc))
    fqdn = socket.getfqdn().lower() or "localhost"
    recipients = join_recipients(args.to)
    quit_early = args.quit_after in ("connect", "ehlo", "tls", "auth", "mail")
    if not recipients and not quit_early:
        return _fail("at least one --to is needed (or --quit-after before rcpt)")
    if args.notify and not valid_notify(args.notify):
        return _fail("--notify takes NEVER or a list of SUCCESS, FAILURE, DELAY")
    if args.data and (args.subject or args.body or args.header or args.attach):
        return _fail("--data sends a file as it is; it excludes --subject/--body/--header/--attach")
    if args.password_stdin and args.data == "-":
        return _fail("--password-stdin and --data - both want stdin")
    sender = args.sender if args.sender is not None else f"{getpass.getuser()}@{fqdn}"
    auth = args.auth or ("AUTO" if args.user else None)
    password = None
    if auth:
        if not args.user:
            return _fail("--auth needs --user")
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {args.user}: ")
    try:
        if args.data == "-":
            message = sys.stdin.buffer.read()
        elif args.data:
            message = Path(args.data).read_bytes()
        else:
            message = build_message(
                sender=sender,
                recipients=recipients,
                subject=args.subject,
                body=args.body,
                headers=args.header,
                attachments=args.attach,
                domain=args.helo or fqdn,
            )
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    opts = SendOptions(
        host=host,
        port=port,
        sender=sender,
        recipients=recipients,
        helo=args.helo or fqdn,
        lmtp=lmtp,
        starttls=args.starttls,
        implicit_tls=implicit,
        insecure=args.insecure,
        ca_file=args.ca,
        auth=auth,
        user=args.user,
        password=password,
        message=message,
        pipeline=args.pipeline,
        notify=args.notify,
        ret=args.ret,
        envid=args.envid,
        size=args.size,
        eightbitmime=args.eightbitmime,
        smtputf8=args.smtputf8,
        quit_after=args.quit_after,
        timeout=args.timeout,
        data_lines=args.data_lines,
    )
    transcript = Transcript(
        sys.stdout, enabled=not (args.quiet or args.json), colour=use_colour(sys.stdout)
    )
    result = send(opts, transcript)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.exit is not Exit.OK and args.quiet:
        print(f"petrel send: failed at {result.stage}: {result.error}", file=sys.stderr)
    if result.exit is Exit.CONNECT and args.server is None:
        # The usual first try: `make serve` is running, on its development port.
        print(
            f"petrel send: no --server given, so {host}:{port} was tried;"
            " `make serve` listens on 127.0.0.1:2525 (--server 127.0.0.1:2525)",
            file=sys.stderr,
        )
    return int(result.exit)
