"""Composition: build the spool, policy, queue manager and listeners, and run them.

``petrel serve`` is this module: it owns start-up order (recover the spool before
accepting anything), signal handling and the orderly shutdown of DESIGN.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petrel import __version__, metrics
from petrel.config import FD_RESERVE, Config, ConfigError
from petrel.delivery.maildir import clean_tmp
from petrel.delivery.manager import QueueManager
from petrel.dkim import Signer
from petrel.dns import Resolver
from petrel.fsutil import (
    UnsafePathError,
    check_trusted_path,
    ensure_dir,
    set_service_uid,
    sync_rounds,
)
from petrel.intake import Intake
from petrel.intake.direct import MaildirCopier
from petrel.intake.pickup import Notified, PickupPoke, PickupWatcher
from petrel.log import log_event
from petrel.pidfile import PID_FILE, remove_pid_file, write_pid_file
from petrel.policy import Policy
from petrel.policy.aliases import open_aliases
from petrel.policy.auth import Authenticator
from petrel.privileges import (
    PrivilegeError,
    drop_privileges,
    give_data_dir,
    service_account,
    warn_root_without_user,
)
from petrel.queue.spool import Spool

if TYPE_CHECKING:
    from petrel.queue.pg import PgStore
from petrel.reload import reread
from petrel.server import Server
from petrel.server.control import ControlServer, ask_etrn, control_path
from petrel.server.notify import monotonic_usec, notify
from petrel.server.server import (
    bind_sockets,
    join_address,
    open_auth_state,
    open_greylist,
    open_rates,
    open_refusals,
)
from petrel.server.tls import TlsManager, copy_material
from petrel.server.workers import PARENT_PID_ENV, WORKER_FDS_ENV, WorkerPool, decode_fds
from petrel.status import ErrorLog, ServerStats
from petrel.web import Events, WebServer

log = logging.getLogger("petrel")

TMP_CLEAN_INTERVAL = 24 * 3600.0  # Maildir tmp/ debris is looked for at start, then daily


def _raise_fd_limit() -> int:
    """Every session is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _warn_fd_shortage(config: Config, fd_limit: int) -> None:
    """An explicit limits.connections is kept as given, but say when fds cannot carry it."""
    if config.limits.connections + FD_RESERVE > fd_limit:
        log_event(
            log,
            "fd-limit-low",
            level=logging.WARNING,
            connections=config.limits.connections,
            fd_limit=fd_limit,
            reason="limits.connections needs more file descriptors than RLIMIT_NOFILE allows",
        )


def _lock_data_dir(data_dir: Path) -> int | None:
    """Hold ``<data_dir>/petrel.lock`` for the life of the process, or None if taken.

    Two servers on one spool would each recover it and delete the other's messages in
    flight. The kernel drops the lock when the process ends, even by kill -9.
    """
    fd = os.open(data_dir / "petrel.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd  # kept open on purpose: closing it would release the lock


def _check_data_dir(config: Config) -> None:
    """Make ``data_dir`` (0700) and refuse files that someone but us or root could change.

    Petrel often runs as root: whoever can write into ``data_dir`` (or the users or
    aliases file) could swap in a symlink and have mail written, or users added, anywhere.
    """
    data_dir = config.server.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_dir(data_dir)
    for path in (data_dir, data_dir / "users", config.aliases.file):
        check_trusted_path(path)


def _warn_unqualified_hostname(config: Config) -> None:
    """A hostname without a dot goes into the greeting and Received fields: say so once."""
    hostname = config.server.hostname
    if "." not in hostname.strip("."):
        log_event(
            log,
            "hostname-not-qualified",
            level=logging.WARNING,
            hostname=hostname,
            reason="used in the greeting, EHLO and Received fields; other servers may"
            " refuse it: set server.hostname to a fully qualified name",
        )


async def _clean_maildir_tmp(mailboxes: Path, stop: threading.Event) -> None:
    """Remove what killed writers left in Maildir tmp/ dirs: at start, then once a day.

    The walk runs in a thread: a big tree would block the event loop.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            removed, skipped = await loop.run_in_executor(
                None, functools.partial(clean_tmp, mailboxes, stop=stop)
            )
        except OSError as exc:
            log_event(log, "maildir-tmp-clean-failed", level=logging.WARNING, error=str(exc))
        else:
            log_event(log, "maildir-tmp-cleaned", removed=removed, skipped=skipped)
        await asyncio.sleep(TMP_CLEAN_INTERVAL)


def _open_shared_queue(config: Config) -> PgStore | None:
    """The PostgreSQL queue, opened; None after one line saying why it cannot be."""
    try:
        from petrel.queue.pg import SchemaError, open_store
    except ImportError as exc:  # the optional extra is not installed
        error = f"queue.backend = postgresql needs psycopg ({exc}): install petrel[postgresql]"
        log_event(log, "queue-store-unavailable", level=logging.ERROR, error=error)
        return None
    try:
        return open_store(config)
    except (OSError, SchemaError) as exc:
        log_event(
            log,
            "queue-store-unavailable",
            level=logging.ERROR,
            backend="postgresql",
            node=config.queue.node,
            error=str(exc),
        )
        return None


async def serve(config: Config, log_args: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads the configuration and TLS, SIGUSR1
    reopens the log file);
    returns the process exit status.

    With ``server.workers`` > 1 this process binds the listeners but runs no sessions:
    worker processes (``serve_worker``) accept on its sockets (petrel.server.workers).
    """
    errors = ErrorLog()  # the last errors, for `petrel status`
    logging.getLogger().addHandler(errors)
    try:
        return await _serve(config, log_args, errors)
    finally:
        logging.getLogger().removeHandler(errors)


async def _serve(config: Config, log_args: list[str] | None, errors: ErrorLog) -> int:
    fd_limit = _raise_fd_limit()
    loop = asyncio.get_running_loop()
    data_dir = config.server.data_dir
    _warn_unqualified_hostname(config)  # before "ready": whoever waits for it sees this
    warn_root_without_user(config)
    try:
        dropped = _become_service_user(config)
    except PrivilegeError as exc:
        log_event(log, "privileges-not-dropped", level=logging.ERROR, error=str(exc))
        return 1
    if dropped is None:
        return 1
    try:  # again as the user the server runs as: it must read the keys on reload too
        Signer.load(config.dkim)
    except ConfigError as exc:
        log_event(log, "dkim-key-unusable", level=logging.ERROR, error=str(exc))
        return 1
    try:
        _check_data_dir(config)
    except UnsafePathError as exc:
        log_event(
            log, "untrusted-path", level=logging.ERROR, data_dir=str(data_dir), error=str(exc)
        )
        return 1
    except OSError as exc:
        log_event(
            log, "data-dir-unusable", level=logging.ERROR, data_dir=str(data_dir), error=str(exc)
        )
        return 1
    lock = _lock_data_dir(data_dir)
    if lock is None:
        log_event(
            log,
            "already-running",
            level=logging.ERROR,
            data_dir=str(data_dir),
            reason="another petrel serve holds this data_dir; stop it first",
        )
        return 1
    policy = Policy(config, open_aliases(config))
    if config.users.backend == "postgresql" and config.aliases.file.exists():
        log_event(  # an operator who moved to the database but forgot the old file
            log,
            "aliases-file-ignored",
            level=logging.WARNING,
            file=str(config.aliases.file),
            reason="the aliases are in the database ([users] backend); petrel alias import",
        )
    dns = Resolver(config.dns)  # the process's one resolver: delivery and sessions share it
    shared = config.queue.backend == "postgresql"
    spool: Spool | PgStore
    manager: QueueManager
    if shared:
        from petrel.delivery.cluster import ClusterManager

        store = _open_shared_queue(config)
        if store is None:
            return 1
        spool = store
        manager = ClusterManager(config, store, policy, dns)
    control = ControlServer(control_path(data_dir))
    control.bind()
    if not shared:
        spool = Spool(data_dir / "queue")
        spool.open()
        spool.copier = MaildirCopier(data_dir / "mailboxes")  # direct delivery at intake
        manager = QueueManager(config, spool, policy, dns)
    recovered = spool.recover()
    manager.start(recovered)
    listeners: list[dict[str, str]] = []  # filled in once bound
    pool: WorkerPool | None = None
    status = functools.partial(
        _status, lambda: config, manager.stats, manager, errors, listeners, lambda: pool
    )
    # Before the listeners: "listening" means it answers. ETRN: for the workers' clients.
    await control.start(manager.admin, etrn=manager.etrn, status=status)
    workers = config.server.workers
    # mail from `petrel sendmail`, and from the workers' sessions when there are workers
    # (a shared queue has none: every commit NOTIFYs the nodes itself)
    pickup = (
        PickupWatcher(spool, manager, accept_any=workers > 1) if isinstance(spool, Spool) else None
    )
    if pickup is not None:
        pickup.start()
    server: Server | None = None
    web_server: WebServer | None = None
    if workers > 1:
        if dropped.tls_fds is None:
            TlsManager(config)  # generate a self-signed pair once, before the workers race to
        open_auth_state(config)[0].table.close()  # the same for the AUTH files
        refusals = open_refusals(config)  # and the rates, greylisting and refusal counts
        open_rates(config, refusals).table.close()
        refusals.close()
        greylist = open_greylist(config)
        if greylist is not None:
            greylist.table.close()
        bound = dropped.sockets if dropped.sockets is not None else _bind_listeners(config)
        http_sockets = {i: bound.pop(i) for i in list(bound) if _is_http(config, i)}
        metrics.share_with_workers(data_dir / "metrics")  # their counts in our /metrics
        pool = WorkerPool(config, workers, bound, log_args or [], dropped.tls_fds)
        pool.start()
        served = [
            (*sock.getsockname()[:2], config.listeners[index].mode)
            for index, socks in bound.items()
            for sock in socks
        ]
    else:
        server = Server(config, manager.intake, policy, loop, dns, dropped.tls)
        served = await server.start(dropped.sockets)
        http_sockets = {
            i: socks for i, socks in (dropped.sockets or {}).items() if _is_http(config, i)
        }
    http_listeners = [
        (listener, http_sockets.get(index))
        for index, listener in enumerate(config.listeners)
        if listener.mode == "http"
    ]
    if http_listeners:
        authenticator: Callable[[], Authenticator]
        if server is not None:
            authenticator = functools.partial(lambda s: s.auth, server)
        else:
            throttle, decoys = open_auth_state(config)
            web_auth = Authenticator(policy, throttle, decoys)
            authenticator = lambda: web_auth  # noqa: E731
        events = Events()
        manager.watch(events)
        metrics.REGISTRY.register(
            metrics.StateCollector(manager.admin.counts, sync_rounds, lambda: spool.commit_count)
        )
        refusals = server.refusals if server is not None else open_refusals(config)
        metrics.REGISTRY.register(metrics.RefusalCollector(refusals.snapshot))
        web_server = WebServer(lambda: config, manager.admin, authenticator, events, status)
        served += await web_server.start(http_listeners)
    listeners.extend({"address": join_address(h, p), "mode": m} for h, p, m in served)
    stop_cleaning = threading.Event()
    cleaner = loop.create_task(_clean_maildir_tmp(manager.mailboxes, stop_cleaning))
    try:
        pid_file = str(write_pid_file(data_dir))  # for `petrel reload`
    except OSError as exc:  # a full disk must not keep mail out: run without it
        pid_file = "none"
        log_event(
            log,
            "pid-file-unwritable",
            level=logging.WARNING,
            path=str(data_dir / PID_FILE),
            error=str(exc),
            effect=f"petrel reload cannot find this server: send SIGHUP to {os.getpid()}",
        )
    log_event(
        log,
        "ready",
        hostname=config.server.hostname,
        data_dir=str(data_dir),
        recovered=len(recovered),
        fd_limit=fd_limit,
        connections=config.limits.connections,
        pid_file=pid_file,
        workers=workers,
        queue=config.queue.backend,
        node=config.queue.node,
    )
    _warn_fd_shortage(config, fd_limit)
    notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=accepting mail")  # Type=notify
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def reload() -> None:  # SIGHUP, `petrel reload`
        nonlocal config, policy
        changed = reread(config, policy)
        if changed is not None:
            config, policy = changed
            dns.reconfigure(config.dns)
            manager.reconfigure(config, policy)
            if server is not None:
                server.reconfigure(config, policy)
        # The certificate is read again even if the file was refused: a renewal's SIGHUP
        # must not wait for an unrelated typo. Workers re-read the file themselves.
        if pool is not None:
            pool.reload()
        elif server is not None:
            server.reload_tls()
        if changed is not None:
            log_event(log, "reloaded", config=str(config.source or "defaults"))

    loop.add_signal_handler(signal.SIGHUP, functools.partial(_notifying_reload, reload))
    if pool is not None:
        loop.add_signal_handler(signal.SIGUSR1, pool.reopen_logs)  # else log.py's handler
    await stop.wait()
    notify("STOPPING=1", "STATUS=stopping")
    log_event(log, "stopping")
    stop_cleaning.set()
    cleaner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cleaner
    await control.close()
    if web_server is not None:
        await web_server.close()
    if pool is not None:
        await pool.stop()
        if pickup is not None:  # the workers' last pokes: deliver them now or at start
            pickup.scan(force=True)
    if server is not None:
        await server.shutdown()
    if pickup is not None:
        await pickup.stop()
    await manager.stop()
    spool.close()
    remove_pid_file(data_dir)
    log_event(log, "stopped", messages=spool.commit_count, syncs=sync_rounds())
    return 0


def _is_http(config: Config, index: int) -> bool:
    return config.listeners[index].mode == "http"


def _notifying_reload(reload: Callable[[], None]) -> None:
    """SIGHUP: reload, told to systemd as RELOADING=1 ... READY=1."""
    notify("RELOADING=1", monotonic_usec(), "STATUS=reloading")
    try:
        reload()
    finally:
        notify("READY=1", "STATUS=accepting mail")


def _status(
    current: Callable[[], Config],
    stats: ServerStats,
    manager: QueueManager,
    errors: ErrorLog,
    listeners: list[dict[str, str]],
    pool: Callable[[], WorkerPool | None],
) -> dict[str, Any]:
    """The answer to the control socket's ``status``: what `petrel status` prints."""
    workers = pool()
    config = current()
    return {
        "pid": os.getpid(),
        "version": __version__,
        "started": stats.started,
        "uptime": max(0.0, time.time() - stats.started),
        "hostname": config.server.hostname,
        "node": config.queue.node,
        "queue_backend": config.queue.backend,
        "data_dir": str(config.server.data_dir),
        "listeners": list(listeners),
        "workers": workers.describe() if workers is not None else [],
        "queue": manager.admin.counts(),
        "messages": stats.counters(),
        "errors": list(errors.records),
    }


@dataclass(slots=True)
class _Dropped:
    """What was opened as root before becoming ``[server] user`` (all None: no drop)."""

    sockets: dict[int, list[socket.socket]] | None = None
    tls: TlsManager | None = None  # a single process: the configured pair, loaded as root
    tls_fds: tuple[int, int] | None = None  # workers: copies of it (tls.copy_material)


def _become_service_user(config: Config) -> _Dropped | None:
    """Started as root with ``[server] user``: data_dir to the user, listeners and the
    configured TLS pair opened as root, then root dropped for good (before any session
    and any worker). Otherwise nothing. None: data_dir unusable (logged).
    """
    account = service_account(config)
    if account is None:
        return _Dropped()
    set_service_uid(account.uid)  # the trust rule judges by the user from now on
    data_dir = config.server.data_dir
    try:
        give_data_dir(data_dir, account)
    except OSError as exc:
        log_event(
            log, "data-dir-unusable", level=logging.ERROR, data_dir=str(data_dir), error=str(exc)
        )
        return None
    if config.log.target == "file":  # workers open it after the drop; SIGUSR1 reopens
        try:
            os.chown(config.log.file, account.uid, account.gid, follow_symlinks=False)
        except OSError as exc:
            log_event(
                log,
                "log-file-not-given",
                level=logging.WARNING,
                path=str(config.log.file),
                user=account.name,
                error=str(exc),
            )
    dropped = _Dropped(sockets=_bind_listeners(config))
    if config.tls.cert is not None and config.tls.key is not None:
        if config.server.workers > 1:
            dropped.tls_fds = copy_material(config.tls.cert, config.tls.key)
        else:
            dropped.tls = TlsManager(config)
    drop_privileges(account)
    log_event(log, "privileges-dropped", user=account.name, uid=account.uid, gid=account.gid)
    return dropped


def _bind_listeners(config: Config) -> dict[int, list[socket.socket]]:
    """The parent binds every served listener; its workers accept on these sockets."""
    bound: dict[int, list[socket.socket]] = {}
    try:
        for index, listener in enumerate(config.listeners):
            bound[index] = bind_sockets(listener)
            for sock in bound[index]:
                host, port = sock.getsockname()[:2]
                address = join_address(host, port)
                if listener.proxy_protocol:
                    log_event(log, "listening", address=address, mode=listener.mode, proxy="yes")
                else:
                    log_event(log, "listening", address=address, mode=listener.mode)
    except OSError:
        for socks in bound.values():
            for sock in socks:
                sock.close()
        raise
    return bound


async def serve_worker(config: Config, number: int) -> int:
    """One of ``server.workers``: SMTP sessions on the parent's sockets, nothing else."""
    _raise_fd_limit()
    loop = asyncio.get_running_loop()
    inherited = decode_fds(os.environ.pop(WORKER_FDS_ENV, ""))
    # The pid the parent gave, not getppid(): a parent killed while this process was
    # starting has already left it to init, and the watchdog below would never fire.
    parent = int(os.environ.pop(PARENT_PID_ENV, "") or os.getppid())
    policy = Policy(config, open_aliases(config))
    # Committed mail is named to the parent through the pickup pipe (a shared queue's
    # commit NOTIFYs every node itself); ETRN is asked of its queue manager over the
    # control socket, so it answers as a single process does.
    etrn = functools.partial(ask_etrn, control_path(config.server.data_dir))
    spool: Spool | PgStore
    submitter: Notified
    if config.queue.backend == "postgresql":
        store = _open_shared_queue(config)
        if store is None:
            return 1
        spool = store
        submitter = Notified(etrn=etrn)
    else:
        spool = Spool(config.server.data_dir / "queue")
        spool.open()  # no recovery: the parent did that before any worker started
        spool.copier = MaildirCopier(config.server.data_dir / "mailboxes")
        submitter = PickupPoke(spool.root, etrn=etrn)
    dns = Resolver(config.dns)
    server = Server(config, Intake(config, spool, submitter), policy, loop, dns)
    await server.start(inherited)
    log_event(log, "worker-ready", pid=os.getpid())
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def reload() -> None:  # the parent forwards its SIGHUP
        nonlocal config, policy
        changed = reread(config, policy)
        if changed is not None:
            config, policy = changed
            dns.reconfigure(config.dns)
            server.reconfigure(config, policy)
        server.reload_tls()
        if changed is not None:
            log_event(log, "reloaded", config=str(config.source or "defaults"))

    loop.add_signal_handler(signal.SIGHUP, reload)

    async def orphaned() -> None:  # the parent was killed: do not serve on alone
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log_event(log, "parent-gone", level=logging.WARNING)
        stop.set()

    watchdog = loop.create_task(orphaned())
    await stop.wait()
    watchdog.cancel()
    log_event(log, "worker-stopping")
    await server.shutdown()
    spool.close()
    log_event(log, "worker-stopped", messages=spool.commit_count, syncs=sync_rounds())
    return 0


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed, else on the stock event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
