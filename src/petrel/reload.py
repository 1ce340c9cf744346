"""SIGHUP (``petrel reload``): read the configuration file again.

`reread` gives the configuration new sessions and deliveries should use, or None when
the file has an error (logged as ``reload-refused``: the running one stays). What a
running process cannot change (listeners, data_dir, workers, user, the log target) is
logged as ``reload-needs-restart`` and kept at its running value until a restart.
"""

from __future__ import annotations

import dataclasses
import logging

from petrel.config import Config, ConfigError, load_config
from petrel.dkim import Signer
from petrel.log import log_event
from petrel.policy import Policy
from petrel.policy.aliases import AliasError, open_aliases

__all__ = ["RESTART_ONLY", "new_policy", "reread"]

log = logging.getLogger("petrel")

# (section, field): field None means the whole value (the listener list).
RESTART_ONLY: tuple[tuple[str, str | None], ...] = (
    ("listeners", None),
    ("server", "data_dir"),
    ("server", "workers"),
    ("server", "user"),
    ("log", "target"),
    ("log", "file"),
    ("log", "format"),
    ("queue", "backend"),  # the store and the users are opened once, at start
    ("queue", "dsn"),
    ("queue", "node"),
    ("queue", "lease"),
    ("users", "backend"),
)


def _key(section: str, name: str | None) -> str:
    return section if name is None else f"{section}.{name}"


def restart_only_changes(running: Config, new: Config) -> list[str]:
    """The dotted keys of RESTART_ONLY whose value differs between the two."""
    changed = []
    for section, name in RESTART_ONLY:
        old_value, new_value = getattr(running, section), getattr(new, section)
        if name is not None:
            old_value, new_value = getattr(old_value, name), getattr(new_value, name)
        if old_value != new_value:
            changed.append(_key(section, name))
    return changed


def keep_restart_only(running: Config, new: Config) -> Config:
    """``new`` with every RESTART_ONLY value taken from ``running``."""
    server = dataclasses.replace(
        new.server,
        data_dir=running.server.data_dir,
        workers=running.server.workers,
        user=running.server.user,
    )
    queue = dataclasses.replace(
        new.queue,
        backend=running.queue.backend,
        dsn=running.queue.dsn,
        node=running.queue.node,
        lease=running.queue.lease,
    )
    return dataclasses.replace(
        new,
        server=server,
        listeners=running.listeners,
        log=running.log,
        queue=queue,
        users=running.users,
    )


def new_policy(config: Config, running: Policy) -> Policy:
    """A Policy for ``config``; the aliases and users tables are kept when their file is
    the same (they re-read it on change) or they are the shared database's. AliasError
    if a new aliases file is broken."""
    return Policy(config, open_aliases(config, running.aliases), running.users)


def reread(running: Config, running_policy: Policy) -> tuple[Config, Policy] | None:
    """The configuration (and policy) after a reload, or None if it was refused."""
    try:
        new = load_config(running.source)
        Signer.load(new.dkim)  # a missing or broken DKIM key refuses the reload
        policy = new_policy(keep_restart_only(running, new), running_policy)
    except (ConfigError, AliasError) as exc:
        error = " ".join(str(exc).split())  # one line
        log_event(
            log,
            "reload-refused",
            level=logging.ERROR,
            error=error,
            effect="the running configuration stays",
        )
        return None
    changed = restart_only_changes(running, new)
    if changed:
        log_event(
            log,
            "reload-needs-restart",
            level=logging.WARNING,
            keys=",".join(changed),
            effect="kept at the running value until petrel serve is restarted",
        )
    return keep_restart_only(running, new), policy
