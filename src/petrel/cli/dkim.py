"""``petrel dkim keygen|check``: make a signing key, and see that DNS publishes it.

Exit status: 0 done (the record matches), 1 the record is missing, differs or could
not be looked up, or the key exists already or cannot be read; 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys

from petrel.config import Config, ConfigError, DkimSign, parse_domain, parse_selector
from petrel.dkim.keys import (
    ALGORITHMS,
    KeyFileError,
    generate,
    key_path,
    load,
    public_of,
    published_key,
    record_line,
)
from petrel.dns import Resolver, Status
from petrel.fsutil import ensure_dir, fsync_dir, write_all
from petrel.privileges import act_as_data_dir_owner

__all__ = ["add_parser", "run"]


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    dkim = sub.add_parser(
        "dkim",
        parents=[common],
        help="make DKIM signing keys and check their DNS records",
        description="DKIM signing keys (RFC 6376, RFC 8463) for [[dkim.sign]].",
    )
    actions = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = actions.add_parser(
        "keygen",
        parents=[common],
        help="write <data_dir>/dkim/DOMAIN.SELECTOR.key and print its DNS TXT record",
    )
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument(
        "--selector", help='the selector (default: "s<year>" for RSA, "e<year>" for Ed25519)'
    )
    keygen.add_argument(
        "--algorithm", choices=ALGORITHMS, default="rsa", help="rsa (2048 bits, default) or ed25519"
    )
    check = actions.add_parser(
        "check",
        parents=[common],
        help="look the TXT record up through [dns] and say whether it matches the key",
    )
    check.add_argument("domain", metavar="DOMAIN")
    check.add_argument(
        "--selector", help="the selector (default: every [[dkim.sign]] entry for DOMAIN)"
    )


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        domain = parse_domain(args.domain, "DOMAIN")
        selector = None if args.selector is None else parse_selector(args.selector, "--selector")
    except ConfigError as exc:
        _say(str(exc))
        return 2
    if args.dkim_command == "keygen":
        return _keygen(config, domain, selector, args.algorithm)
    return _check(config, domain, selector)


def _say(text: str) -> None:
    print(f"petrel: {text}", file=sys.stderr)


def _keygen(config: Config, domain: str, selector: str | None, algorithm: str) -> int:
    year = datetime.datetime.now(datetime.UTC).year
    selector = (selector or f"{'s' if algorithm == 'rsa' else 'e'}{year}").lower()
    act_as_data_dir_owner(config)  # as root: the server (data_dir's owner) must read it
    data_dir = config.server.data_dir
    path = key_path(data_dir, domain, selector)
    pem = generate(algorithm)
    try:
        ensure_dir(data_dir)
        if ensure_dir(path.parent):
            fsync_dir(data_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        _say(f"{path} exists: not overwritten (remove it first, or choose another --selector)")
        return 1
    except OSError as exc:
        _say(f"cannot write {path}: {exc.strerror or exc}")
        return 1
    try:
        write_all(fd, pem)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        _say(f"cannot write {path}: {exc.strerror}")
        return 1
    os.close(fd)
    fsync_dir(path.parent)
    _, public = public_of(pem)
    print(record_line(domain, selector, algorithm, public))
    _say(
        f"wrote {path}; publish the record above, then add to the configuration: "
        f'[[dkim.sign]] domain = "{domain}", selector = "{selector}"'
    )
    return 0


def _entries(config: Config, domain: str, selector: str | None) -> list[DkimSign]:
    """The keys to check: the configured ones for ``domain`` (the one ``selector``
    names), else the key keygen would have written for that selector."""
    configured = [
        e
        for e in config.dkim.sign
        if e.domain == domain and (selector is None or e.selector == selector)
    ]
    if configured or selector is None:
        return configured
    return [DkimSign(domain, selector, key_path(config.server.data_dir, domain, selector))]


def _check(config: Config, domain: str, selector: str | None) -> int:
    entries = _entries(config, domain, selector)
    if not entries:
        _say(f"no [[dkim.sign]] entry for {domain}: name one with --selector")
        return 1
    dns = Resolver(config.dns)
    status = 0
    for entry in entries:
        try:
            key = load(entry)
        except KeyFileError as exc:
            _say(f"{entry.key}: {exc}")
            status = 1
            continue
        name = f"{entry.selector}._domainkey.{domain}"
        want = record_line(domain, entry.selector, key.algorithm, key.public)
        found = asyncio.run(dns.txt(name))
        if found.temporary:
            print(f"{name}: lookup failed, try again later: {found.error}")
            status = 1
            continue
        if found.status is not Status.OK:
            print(f"{name}: no TXT record published; publish:\n{want}")
            status = 1
            continue
        published = [p for p in map(published_key, found.records) if p is not None]
        if (key.algorithm, key.public) in published:
            print(f"{name}: OK, the published key matches {entry.key} ({key.algorithm})")
            continue
        what = "is no DKIM key record" if not published else "does not match"
        print(f"{name}: the published record {what} {entry.key}; publish instead:\n{want}")
        status = 1
    return status
