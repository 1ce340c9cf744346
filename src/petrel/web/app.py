"""The ``http`` listeners: web console, ``/api/v1/…`` (JSON) and ``/metrics``.

aiohttp on the ``petrel serve`` parent's event loop, next to the queue manager: the API
reads the queue through the manager's `LiveAdmin` and the same `execute` requests as
``petrel queue``, and the mailboxes through `delivery.maildir` (in a thread). Every
response carries a strict Content-Security-Policy; a message's HTML is served only from
``/api/v1/messages/{id}/html`` with a CSP of its own (no script, no remote content,
``sandbox``) and shown in an ``<iframe sandbox>``, so it never runs in the console's
origin. Actions (POST, DELETE) from a browser must be same-origin and carry the page's
CSRF token; a bearer-token client (not ambient credentials) needs neither.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hmac
import html
import importlib.resources
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from petrel import metrics
from petrel.config import Config, Listener
from petrel.log import log_event
from petrel.policy.auth import Authenticator
from petrel.queue.admin import QueueControl, UnknownMessageError, execute
from petrel.queue.ids import is_valid_queue_id
from petrel.server.server import bind_sockets, join_address

from .auth import Denied, HttpAuth, Login, csrf_token
from .events import Events
from .mail import Mailstore, decode_id, split_mailbox

__all__ = ["WebServer"]

log = logging.getLogger("petrel.web")

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none';"
    " frame-ancestors 'none'"
)
# The message's own HTML: nothing but inline styles and inline images, never a script.
MESSAGE_CSP = (
    "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline';"
    " frame-ancestors 'self'; sandbox"
)
_MAX_LIMIT = 500
_DEFAULT_LIMIT = 50
_KEEPALIVE = 15.0  # seconds between SSE comments, so proxies keep the stream open
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LOGIN = web.RequestKey("login", Login)


class Admin(QueueControl, Protocol):
    """The running queue: `delivery.admin.LiveAdmin`, or `delivery.cluster.ClusterAdmin`
    on a shared PostgreSQL queue; `flush_one` is ``POST /api/v1/queue/{id}/flush``."""

    def flush_one(self, queue_id: str) -> bool: ...

    def counts(self) -> dict[str, Any]: ...


class ApiError(Exception):
    """Answered as ``{"error": code, "message": text}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _bad(parameter: str, message: str) -> ApiError:
    return ApiError(400, "bad-parameter", f"{parameter}: {message}")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=functools.partial(json.dumps))


def _resource(name: str) -> bytes:
    return importlib.resources.files("petrel.web").joinpath(name).read_bytes()


class WebServer:
    """The aiohttp application and its sites, one per ``http`` listener."""

    def __init__(
        self,
        config: Callable[[], Config],
        admin: Admin,
        authenticator: Callable[[], Authenticator],
        events: Events,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self._config = config
        self.admin = admin
        self.events = events
        self._status = status
        self.auth = HttpAuth(lambda: config().http.auth, authenticator)
        self.mail = Mailstore(config().server.data_dir / "mailboxes")
        self._csrf_key = secrets.token_bytes(32)
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self.app = self._build()

    # -- set-up ------------------------------------------------------------------------

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._guard], client_max_size=1 << 20)
        r = app.router
        r.add_get("/", self.console)
        r.add_get("/static/{name}", self.static)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/v1/openapi.json", self.openapi)
        r.add_get("/api/v1/mailboxes", self.mailboxes)
        r.add_get("/api/v1/mailboxes/{address}/messages", self.messages)
        r.add_get("/api/v1/messages/{id}", self.message)
        r.add_get("/api/v1/messages/{id}/raw", self.raw)
        r.add_get("/api/v1/messages/{id}/html", self.message_html)
        r.add_get("/api/v1/messages/{id}/attachments/{index}", self.attachment)
        r.add_delete("/api/v1/messages/{id}", self.delete_message)
        r.add_get("/api/v1/queue", self.queue)
        r.add_post("/api/v1/queue/flush", self.flush_all)
        r.add_get("/api/v1/queue/{id}", self.queue_show)
        r.add_post("/api/v1/queue/{id}/{action}", self.queue_action)
        r.add_delete("/api/v1/queue/{id}", self.queue_delete)
        r.add_get("/api/v1/stats", self.stats)
        r.add_get("/api/v1/events", self.stream)
        return app

    async def start(
        self, listeners: list[tuple[Listener, list[socket.socket] | None]]
    ) -> list[tuple[str, int, str]]:
        """Serve on each ``http`` listener (on the sockets bound before a drop of root,
        if given); returns (host, port, "http") as bound."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        bound: list[tuple[str, int, str]] = []
        for listener, given in listeners:
            sockets = bind_sockets(listener) if given is None else given
            for sock in sockets:
                site = web.SockSite(self._runner, sock)
                await site.start()
                host, port = sock.getsockname()[:2]
                bound.append((host, port, "http"))
                if given is None:  # else logged when they were bound
                    log_event(log, "listening", address=join_address(host, port), mode="http")
        return bound

    async def close(self) -> None:
        self.events.close()  # SSE streams end first, so the runner need not wait for them
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middlewares -------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """JSON errors for the API, never a traceback; the security headers on everything."""
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _json({"error": exc.code, "message": exc.message}, exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "http-error")
            response = _json({"error": code, "message": exc.reason}, exc.status)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("http request failed: %s %s", request.method, request.path)
            response = _json({"error": "internal", "message": "internal error (logged)"}, 500)
        if not response.prepared:
            headers = response.headers
            headers.setdefault("Content-Security-Policy", CONSOLE_CSP)
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Referrer-Policy"] = "no-referrer"
            headers.setdefault("X-Frame-Options", "DENY")
            headers.setdefault("Cache-Control", "no-store")
        return response

    @web.middleware
    async def _guard(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Host (under auth = none), credentials, then CSRF for actions."""
        if self._config().http.auth == "none" and not _loopback_host(request.host):
            # DNS rebinding: a page on evil.example resolved to 127.0.0.1 reads no mail.
            raise ApiError(421, "misdirected", f"Host {request.host!r} is not served here")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ip = str(peer[0]) if peer else "unknown"
        login = await self.auth.check(ip, request.headers.get("Authorization"))
        if isinstance(login, Denied):
            response = _json(
                {
                    "error": "unauthorized"
                    if login.status == 401
                    else "forbidden"
                    if login.status == 403
                    else "locked-out",
                    "message": login.message,
                },
                login.status,
            )
            if login.status == 401:
                response.headers["WWW-Authenticate"] = 'Basic realm="Petrel", charset="UTF-8"'
            log_event(
                log, "http-auth-refused", client=ip, status=login.status, reason=login.message
            )
            return response
        if request.method not in ("GET", "HEAD") and not login.bearer:
            self._check_csrf(request, login)
        request[_LOGIN] = login
        return await handler(request)

    def _check_csrf(self, request: web.Request, login: Login) -> None:
        """A browser's action must come from our own page: same origin and the token.

        Tools that send neither Origin nor Sec-Fetch-Site (curl, scripts) are no
        browser acting for someone else, and pass.
        """
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if origin is None and fetch_site is None:
            return
        own = f"{request.scheme}://{request.host}"
        if (origin is not None and origin != own) or fetch_site not in (None, "same-origin"):
            raise ApiError(403, "csrf", "cross-site request refused")
        token = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(token, csrf_token(self._csrf_key, login.user)):
            raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token")

    # -- the console -------------------------------------------------------------------

    async def console(self, request: web.Request) -> web.Response:
        login: Login = request[_LOGIN]
        page = _resource("console.html").decode()
        page = page.replace("{{csrf}}", csrf_token(self._csrf_key, login.user))
        page = page.replace("{{user}}", html.escape(login.user or "(no login)"))
        page = page.replace("{{hostname}}", html.escape(self._config().server.hostname))
        return web.Response(text=page, content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise ApiError(404, "not-found", f"no such file: {name}")
        return web.Response(
            body=_resource(f"static/{name}"),
            content_type=_STATIC[name],
            headers={"Cache-Control": "no-cache"},
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=_resource("openapi.json"), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        # On the loop, not in a thread: the collectors read the queue manager's memory.
        body = metrics.exposition()
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    # -- mailboxes ---------------------------------------------------------------------

    async def mailboxes(self, request: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.mail.mailboxes))

    async def messages(self, request: web.Request) -> web.Response:
        address = request.match_info["address"]
        where = split_mailbox(address)
        if where is None:
            raise _bad("address", f"not a mailbox address: {address!r}")
        query = request.query
        limit = _int(query, "limit", _DEFAULT_LIMIT, 1, _MAX_LIMIT)
        offset = _int(query, "offset", 0, 0, 1 << 31)
        filters = {k: query[k].lower() for k in ("from", "to", "subject", "q") if query.get(k)}
        since = _date(query, "since")
        before = _date(query, "before")
        try:
            listed = await asyncio.to_thread(self.mail.messages, *where)
        except FileNotFoundError:
            raise ApiError(404, "not-found", f"no mailbox {address}") from None
        except ValueError as exc:
            raise _bad("address", str(exc)) from None
        selected = [m for m in listed if _matches(m, filters, since, before)]
        page = selected[offset : offset + limit]
        response = _json(page)
        response.headers["X-Total-Count"] = str(len(selected))
        return response

    def _ref(self, request: web.Request) -> Any:
        ref = decode_id(request.match_info["id"])
        if ref is None:
            raise ApiError(404, "not-found", "no such message")
        return ref

    async def message(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        try:
            info = await asyncio.to_thread(self.mail.message, ref)
            if not info["seen"] and await asyncio.to_thread(self.mail.mark_seen, ref):
                info["seen"] = True  # read, as a mail reader would mark it
        except FileNotFoundError:
            raise ApiError(404, "not-found", "no such message") from None
        return _json(info)

    async def raw(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        try:
            data = await asyncio.to_thread(self.mail.raw, ref)
        except FileNotFoundError:
            raise ApiError(404, "not-found", "no such message") from None
        return web.Response(body=data, content_type="message/rfc822")

    async def message_html(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        try:
            text = await asyncio.to_thread(self.mail.html, ref)
        except FileNotFoundError:
            raise ApiError(404, "not-found", "no such message") from None
        if text is None:
            raise ApiError(404, "not-found", "this message has no HTML part")
        return web.Response(
            text=text,
            content_type="text/html",
            headers={"Content-Security-Policy": MESSAGE_CSP, "X-Frame-Options": "SAMEORIGIN"},
        )

    async def attachment(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        index_text = request.match_info["index"]
        if not index_text.isdigit():
            raise _bad("index", "must be a number")
        try:
            found = await asyncio.to_thread(self.mail.attachment, ref, int(index_text))
        except FileNotFoundError:
            raise ApiError(404, "not-found", "no such message") from None
        if found is None:
            raise ApiError(404, "not-found", f"no attachment {index_text}")
        filename, _, data = found
        safe = "".join(c if c.isalnum() or c in "._- " else "_" for c in filename)[:100]
        return web.Response(
            body=data,
            content_type="application/octet-stream",  # never rendered in our origin
            headers={"Content-Disposition": f'attachment; filename="{safe or "attachment"}"'},
        )

    async def delete_message(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        try:
            await asyncio.to_thread(self.mail.delete, ref)
        except FileNotFoundError:
            raise ApiError(404, "not-found", "no such message") from None
        log_event(
            log,
            "message-deleted",
            mailbox=ref.mailbox,
            unique=ref.unique,
            by=request[_LOGIN].user or "-",
        )
        self.events.publish(
            "message", {"event": "deleted", "mailbox": ref.mailbox, "id": request.match_info["id"]}
        )
        return _json({"deleted": True})

    # -- the queue ---------------------------------------------------------------------

    def _execute(self, request: web.Request, op: str, queue_id: str | None = None) -> Any:
        if queue_id is not None and not is_valid_queue_id(queue_id):
            raise ApiError(404, "not-found", f"{queue_id}: no such message")
        answer = execute(self.admin, {"op": op, "id": queue_id})
        if not answer["ok"]:
            status = 404 if answer["error"] == "unknown" else 400
            raise ApiError(
                status, "not-found" if status == 404 else answer["error"], answer["message"]
            )
        if op not in ("list", "show"):
            log_event(log, "queue-action", op=op, id=queue_id, by=request[_LOGIN].user or "-")
        return answer

    async def queue(self, request: web.Request) -> web.Response:
        return _json(self._execute(request, "list")["messages"])

    async def queue_show(self, request: web.Request) -> web.Response:
        return _json(self._execute(request, "show", request.match_info["id"])["message"])

    async def flush_all(self, request: web.Request) -> web.Response:
        return _json({"flushed": self._execute(request, "flush")["count"]})

    async def queue_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        queue_id = request.match_info["id"]
        if action == "flush":
            if not is_valid_queue_id(queue_id):
                raise ApiError(404, "not-found", f"{queue_id}: no such message")
            try:
                flushed = self.admin.flush_one(queue_id)
            except UnknownMessageError as exc:
                raise ApiError(404, "not-found", str(exc)) from None
            log_event(log, "queue-action", op="flush", id=queue_id, by=request[_LOGIN].user or "-")
            return _json({"changed": flushed})
        if action not in ("hold", "release"):
            raise ApiError(404, "not-found", f"no action {action!r} (flush, hold, release)")
        return _json({"changed": self._execute(request, action, queue_id)["changed"]})

    async def queue_delete(self, request: web.Request) -> web.Response:
        answer = self._execute(request, "delete", request.match_info["id"])
        return _json({"removed": answer["removed"], "pending": answer["pending"]})

    # -- the dashboard and the stream --------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        status = self._status()
        return _json(
            {
                "hostname": status["hostname"],
                "uptime": status["uptime"],
                "queue": status["queue"],
                "accepted": self.events.totals["accepted"],
                "rejected": metrics.total_rejected(),
                "delivered": self.events.totals["delivered"],
                "deferred": self.events.totals["deferred"],
                "failed": self.events.totals["failed"],
                "throughput": self.events.throughput(),
            }
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``text/event-stream``: ``message`` and ``queue`` events until the client goes."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                "Content-Security-Policy": CONSOLE_CSP,
                "X-Content-Type-Options": "nosniff",
            }
        )
        await response.prepare(request)
        client = self.events.subscribe()
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            await response.write(b"retry: 2000\n: connected\n\n")
            while (batch := await client.next_batch(_KEEPALIVE)) is not None:
                await response.write(batch.encode() if batch else b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.events.unsubscribe(client)
            if task is not None:
                self._streams.discard(task)
        return response


def _int(query: Any, name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise _bad(name, f"must be a whole number from {low} to {high}")
    return int(text)


def _date(query: Any, name: str) -> str | None:
    """An ISO 8601 date or date-time (compared as text with the messages' ISO dates)."""
    text = query.get(name)
    if text is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise _bad(name, "must be an ISO 8601 date, e.g. 2026-12-01 or 2026-12-01T10:00") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC).isoformat()


def _matches(
    m: dict[str, Any], filters: dict[str, str], since: str | None, before: str | None
) -> bool:
    """Case-insensitive substring search in sender, recipients, subject (q: any of them)."""
    sender = m["from"].lower()
    rcpts = " ".join(m["to"]).lower()
    subject = m["subject"].lower()
    if "from" in filters and filters["from"] not in sender:
        return False
    if "to" in filters and filters["to"] not in rcpts:
        return False
    if "subject" in filters and filters["subject"] not in subject:
        return False
    if "q" in filters and not any(filters["q"] in f for f in (sender, rcpts, subject)):
        return False
    if since is not None or before is not None:
        when = _utc(m["date"] or m["received"])
        if when is None:
            return False
        if since is not None and when < since:
            return False
        if before is not None and when >= before:
            return False
    return True


def _utc(iso: str | None) -> str | None:
    if iso is None:
        return None
    parsed = datetime.datetime.fromisoformat(iso)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC).isoformat()


def _loopback_host(host: str) -> bool:
    if host.startswith("["):
        name = host[1 : host.find("]")]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
