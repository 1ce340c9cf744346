"""``petrel sendmail`` and a ``sendmail``-named entry point: sendmail(1) option parsing.

Options are parsed by hand because sendmail's syntax predates getopt conventions
(``-oi``, ``-fSENDER``, ``-odi``). Unknown ``-o``/``-b`` variants that change nothing
for a queue-only submission are accepted and ignored, as Postfix does.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from petrel.cli import queue as queue_cli
from petrel.config import ConfigError, default_config_path, load_config
from petrel.intake import Intake
from petrel.intake.local import (
    EX_USAGE,
    SendmailError,
    SendmailOptions,
    local_submitter,
    open_spool,
    prepare,
    read_message,
    submit,
)
from petrel.policy import Policy
from petrel.policy.aliases import open_aliases
from petrel.privileges import act_as_data_dir_owner
from petrel.server.stdio import serve_stdio

__all__ = ["USAGE", "main", "parse_args"]

USAGE = """\
usage: petrel sendmail [-t] [-i|-oi] [-f SENDER] [-F NAME] [--config FILE] [RCPT ...]
       petrel sendmail -bs [--config FILE]
       petrel sendmail -bp | -q | -qR DOMAIN [--config FILE]
Reads a message from stdin and queues it (the server may be running or stopped).
  -t          take recipients from To/Cc/Bcc as well (Bcc is removed)
  -i, -oi     a line with a single "." does not end the message
  -f SENDER   envelope sender (default: you@hostname; -f '<>' for the null sender)
  -F NAME     full name for a From: field that gets added
  -C, --config FILE   Petrel configuration (default $PETREL_CONFIG, else
                      /etc/petrel/petrel.toml if it exists)
  -bs         SMTP on stdin/stdout: one session of a trusted local client (any
              sender, any recipient; no STARTTLS, no AUTH), each message queued
              and answered 250 with its queue id; ends at QUIT or end of input
  -bp         no message: list the queue (mailq, the output of `petrel queue list`)
  -q          no message: try deferred mail now (`petrel queue flush`);
              -qR DOMAIN for that domain only; -q<interval> is ignored
exit status (sysexits.h): 0 queued, 64 usage, 65 bad address, 67 every recipient
refused, 73 spool not writable, 75 temporary failure (try again).
A recipient refused among others (e.g. an unknown local user) is reported on stderr
and bounced to the sender; the message is queued for the rest and the status is 0.
-bs exits 0 at QUIT or end of input (refusals are SMTP replies), 73 without a spool.
-bp and -q exit as `petrel queue` does (0 done, 1 or 2 trouble).
"""

_IGNORED_WITH_VALUE = {"-B", "-N", "-R", "-V", "-X", "-h", "-L", "-O"}


def parse_args(argv: Sequence[str]) -> tuple[SendmailOptions, Path | None]:
    opts = SendmailOptions()
    config = os.environ.get("PETREL_CONFIG") or None
    args = list(argv)
    i = 0

    def value(flag: str, arg: str) -> str:
        nonlocal i
        if len(arg) > len(flag):
            return arg[len(flag) :]
        i += 1
        if i >= len(args):
            raise SendmailError(EX_USAGE, f"option {flag} needs a value")
        return args[i]

    while i < len(args):
        arg = args[i]
        if arg == "--":
            opts.recipients += args[i + 1 :]
            break
        if arg in ("-h", "--help"):
            raise SendmailError(0, USAGE)
        if arg == "--config" or arg.startswith("--config="):
            config = value("--config=", arg) if "=" in arg else value("--config", arg)
        elif arg.startswith("-C"):
            config = value("-C", arg)
        elif arg == "-t":
            opts.extract = True
        elif arg in ("-i", "-oi"):
            opts.ignore_dots = True
        elif arg.startswith(("-f", "-r")):
            opts.sender = value(arg[:2], arg)
        elif arg.startswith("-F"):
            opts.full_name = value("-F", arg)
        elif arg[:2] in _IGNORED_WITH_VALUE:
            value(arg[:2], arg)
        elif arg == "-bp":
            opts.mode = "bp"
        elif arg == "-bs":
            opts.mode = "bs"
        elif arg == "-q":
            opts.mode = "q"
        elif arg.startswith("-qR"):
            opts.mode = "q"
            opts.flush_domain = value("-qR", arg)
        elif arg.startswith(("-o", "-b", "-v", "-U", "-n", "-m", "-e", "-q")):
            # -q<interval> (a daemon's period in Sendmail) is ignored, as in Postfix
            if arg.startswith("-b") and arg not in ("-bm", "-b"):
                raise SendmailError(EX_USAGE, f"mode {arg} is not supported (-bm, -bp, -bs)")
        elif arg.startswith("-") and arg != "-":
            raise SendmailError(EX_USAGE, f"unknown option {arg}")
        else:
            opts.recipients.append(arg)
        i += 1
    return opts, Path(config) if config else default_config_path()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``petrel sendmail`` and the ``petrel-sendmail`` script."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, config_path = parse_args(argv)
        config = load_config(config_path)
        if opts.mode == "bs":  # SMTP on stdin/stdout
            user, uid = getpass.getuser(), os.getuid()
            act_as_data_dir_owner(config)
            spool = open_spool(config)
            try:
                intake = Intake(config, spool, local_submitter(spool))
                policy = Policy(config, open_aliases(config))
                stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
                serve_stdio(config, intake, policy, user=user, uid=uid, infd=stdin, out=stdout)
            finally:
                spool.close()
            return 0
        if opts.mode != "bm":  # mailq and the queue flush: what `petrel queue` does
            action = "list" if opts.mode == "bp" else "flush"
            return queue_cli.run(
                config, argparse.Namespace(action=action, domain=opts.flush_domain)
            )
        message = read_message(sys.stdin.buffer, ignore_dots=opts.ignore_dots)
        submission = prepare(message, opts, config)
        user, uid = getpass.getuser(), os.getuid()  # the submitter, before a switch
        act_as_data_dir_owner(config)  # as root: what the spool gets is the server's
        submit(submission, config, user=user, uid=uid)
        for address, why in submission.refused:  # queued for the others, bounced to sender
            print(f"sendmail: {address}: {why}", file=sys.stderr)
    except SendmailError as exc:
        if exc.status == 0:
            print(exc, end="")  # --help
        else:
            print(f"sendmail: {exc}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    return 0
