"""Running as ``[server] user``: the one irreversible drop of ``petrel serve``, and the
switch of a ``petrel`` subcommand run as root to the owner of ``data_dir``.

``petrel serve`` started as root with ``user`` set binds its listeners and reads its
TLS material as root, hands ``data_dir`` to the user, then drops root for good in the
parent before it spawns any worker (they inherit the ids). A subcommand run as root
against a ``data_dir`` that belongs to someone else becomes that owner before it
touches a file, so what it writes is the server's to read.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from petrel.config import Config
from petrel.fsutil import set_service_uid
from petrel.log import log_event

__all__ = [
    "Account",
    "PrivilegeError",
    "act_as_data_dir_owner",
    "drop_privileges",
    "give_data_dir",
    "service_account",
    "warn_root_without_user",
]

log = logging.getLogger("petrel")

# Below data_dir, what a start as root hands to the user every time. mailboxes/ is
# walked only on the first start (data_dir not yet the user's): below it, only the
# server writes, and a big tree is not walked on every start.
_MAILBOXES = "mailboxes"


class PrivilegeError(OSError):
    """The drop did not happen, or could be undone."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int


def service_account(config: Config) -> Account | None:
    """``[server] user`` when this process runs as root and must become it, else None."""
    name = config.server.user
    if name is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(name)  # checked by the configuration; KeyError if removed since
    return Account(name, entry.pw_uid, entry.pw_gid)


def warn_root_without_user(config: Config) -> bool:
    """One warning line when root serves a privileged port with no ``user`` to become."""
    if os.geteuid() != 0 or config.server.user is not None:
        return False
    ports = sorted({lst.port for lst in config.listeners if 0 < lst.port < 1024})
    if not ports:
        return False
    log_event(
        log,
        "running-as-root",
        level=logging.WARNING,
        ports=",".join(map(str, ports)),
        reason="started as root without [server] user: every session runs as root",
    )
    return True


def _chown(path: str, account: Account) -> None:
    st = os.lstat(path)
    if st.st_uid != account.uid or st.st_gid != account.gid:
        os.chown(path, account.uid, account.gid, follow_symlinks=False)


def give_data_dir(data_dir: Path, account: Account) -> None:
    """Make ``data_dir`` (0700) if needed and hand it and what is in it to ``account``.

    Never follows a symbolic link (an operator's Maildir link is left as found).
    The whole tree on the first start (data_dir was not the user's yet); later, all
    but the Maildirs, so files a root-run command left in the spool are readable again.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    first = os.lstat(data_dir).st_uid != account.uid
    for top, dirs, files in os.walk(data_dir):
        _chown(top, account)
        if not first and Path(top) == data_dir and _MAILBOXES in dirs:
            dirs.remove(_MAILBOXES)
            mailboxes = data_dir / _MAILBOXES
            _chown(str(mailboxes), account)
            for name in os.listdir(mailboxes):  # the domain directories, not below
                if stat.S_ISDIR(os.lstat(mailboxes / name).st_mode):
                    _chown(str(mailboxes / name), account)
        for name in files:
            _chown(os.path.join(top, name), account)
        for name in dirs:  # os.walk does not descend into links: chown the link itself
            if os.path.islink(os.path.join(top, name)):
                _chown(os.path.join(top, name), account)


def drop_privileges(account: Account) -> None:
    """Become ``account`` for good: no supplementary groups, its gid, its uid.

    setuid as root sets the real, effective and saved uid, so nothing can take root
    back; that is checked, and a drop that could be undone raises PrivilegeError.
    """
    os.setgroups([])
    os.setgid(account.gid)
    os.setuid(account.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError(f"dropping root for user {account.name} could be undone")
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise PrivilegeError(f"dropping root for user {account.name} left other ids")
    set_service_uid(account.uid)


def act_as_data_dir_owner(config: Config) -> None:
    """Run as root, become the owner of ``data_dir`` before touching anything in it.

    The owner is who the server runs as: what a root-run ``petrel user add`` or
    ``petrel sendmail`` writes must stay readable to it. No data_dir yet: become
    ``[server] user`` if one is set. Root's own data_dir: stay root.
    """
    if os.geteuid() != 0:
        return
    try:
        uid = os.stat(config.server.data_dir).st_uid
    except FileNotFoundError:
        account = service_account(config)
        if account is None:
            return
        uid = account.uid
    if uid == 0:
        return
    try:
        entry = pwd.getpwuid(uid)
        account = Account(entry.pw_name, uid, entry.pw_gid)
    except KeyError:  # a uid without a name: its files' group is the best guess
        account = Account(str(uid), uid, os.stat(config.server.data_dir).st_gid)
    drop_privileges(account)
