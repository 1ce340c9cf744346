"""The ``petrel`` command: argument parsing only; the work lives in the library."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from petrel import __version__
from petrel.config import Config, ConfigError, load_config
from petrel.log import FORMATS, LEVELS, setup_logging
from petrel.policy.aliases import AliasError, Aliases

from . import queue


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("PETREL_CONFIG") or None,
        help="TOML configuration file (default: $PETREL_CONFIG, else embedded defaults)",
    )
    parser = argparse.ArgumentParser(prog="petrel", description="Petrel, an ESMTP mail server.")
    parser.add_argument("--version", action="version", version=f"petrel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve", parents=[common], help="run the listeners and the queue manager"
    )
    serve.add_argument("--log-format", choices=FORMATS, default="text")
    serve.add_argument("--log-level", choices=list(LEVELS), default="info")
    sub.add_parser("check-config", parents=[common], help="validate the configuration")
    queue.add_parser(sub, common)
    return parser


def _load(path: Path | None) -> Config:
    config = load_config(path)
    Aliases.load(config.aliases.file)  # a broken aliases file is a configuration error
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load(args.config)
    except (ConfigError, AliasError) as exc:
        print(f"petrel: {exc}", file=sys.stderr)
        return 2
    if args.command == "queue":
        return queue.run(config, args)
    if args.command == "check-config":
        source = config.source or "embedded defaults"
        print(f"petrel: configuration OK ({source})")
        return 0
    setup_logging(args.log_format, args.log_level)
    from petrel.app import run, serve

    return run(serve(config))
