"""The SMTP and LMTP client transport: hands queued messages to the next hop.

Every byte on the wire is produced and parsed by the sans-IO ``smtp.ClientConnection``;
this module only moves bytes over asyncio streams and turns replies into per-recipient
results. A *route* is where a recipient's mail goes: a domain's MX hosts (`petrel.dns`, or
the static ``[delivery] hosts`` table that test rigs use instead of DNS), the
``[relay]`` smarthost, or an ``[domains] lmtp`` target; every name among them is
resolved by `petrel.dns` too, never by the system resolver. One session carries several
messages for its route (connection reuse), and a semaphore per route caps how many
sessions run at once, as Postfix's ``default_destination_concurrency_limit`` does.

Outcomes follow Postfix's smtp(8): 2xx delivered, 4xx deferred, 5xx failed for that
recipient; a connection that cannot be made, drops or stalls defers what it had not
finished and the next MX host is tried.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import petrel.dns
from petrel import smtp
from petrel.client.sasl import AuthError, choose_mechanism, make_mechanism
from petrel.config import Config, DeliverySection
from petrel.delivery.mime7bit import ConversionError, to_7bit
from petrel.delivery.outcome import Job as BaseJob
from petrel.delivery.outcome import Outcome, Result, Route, deferred, failed, local_error
from petrel.dns import Status
from petrel.log import log_event
from petrel.queue.store import QueueStore
from petrel.smtp import NEED_DATA, ClientConnection, RemoteProtocolError

__all__ = [
    "DEFERRED",
    "DELIVERED",
    "FAILED",
    "Hop",
    "Job",
    "Resolver",
    "Result",
    "Route",
    "RouteError",
    "SmtpTransport",
    "remote_route",
]

log = logging.getLogger("petrel.smtp")

# The outcome words, spelled once in outcome.py; the names stay importable from here.
DELIVERED = Outcome.DELIVERED
DEFERRED = Outcome.DEFERRED
FAILED = Outcome.FAILED


@dataclass(frozen=True, slots=True)
class Hop:
    """One host to try: a name or IP and port, or a unix socket path (LMTP)."""

    host: str
    port: int
    path: str | None = None
    address: str | None = None  # the IP to connect to (every TCP hop has one)

    def __str__(self) -> str:
        """As Postfix names a peer in its deferral texts: host and port (an IPv6 in [])."""
        return self.path or (
            f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        )


@dataclass(slots=True)
class Job(BaseJob):
    """The transport's working copy of a job: ``results`` is filled in, aligned with
    ``recipients``."""

    results: list[Result | None] = field(default_factory=list)
    # ``body`` as 7-bit MIME, made for the first peer without 8BITMIME and kept for the rest
    seven_bit: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.results:
            self.results = [None] * len(self.recipients)

    def open_indexes(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r is None]

    def settle_open(self, result: Result) -> None:
        for i in self.open_indexes():
            self.results[i] = result


class RouteError(Exception):
    """No hop can be found for a route; ``result`` says defer or fail."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.text)
        self.result = result


class _SessionError(Exception):
    """The session cannot go on with this hop; ``result`` applies to what is unfinished."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.text)
        self.result = result


class Resolver:
    """MX lookup (RFC 5321 §5.1): MX in preference order, else A/AAAA, null MX refused.

    Every hop carries the address to connect to, found through the process's
    `petrel.dns.Resolver`: the MX hosts' and also the names the configuration gives
    (``[delivery] hosts``, the smarthost, LMTP targets; see `configured`). The system
    resolver is never asked.
    """

    def __init__(self, delivery: DeliverySection, dns: petrel.dns.Resolver) -> None:
        self.port = delivery.mx_port
        self.static = delivery.hosts
        self.use_dns = delivery.dns
        self.dns = dns

    async def hops(self, domain: str) -> list[Hop]:
        domain = domain.lower().rstrip(".")
        if domain.startswith("[") and domain.endswith("]"):  # address literal
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            address = str(ipaddress.ip_address(literal))
            return [Hop(address, self.port, address=address)]
        static = self.static.get(domain)
        if static is not None:
            if any(host == "." for host, _ in static):
                raise RouteError(_null_mx(domain))
            targets = [(host, port or self.port) for host, port in static]
            return await self.configured(targets, f"delivery.hosts.{domain}")
        if not self.use_dns:
            raise RouteError(
                deferred("4.4.3", f"No route to {domain}: DNS is off (delivery.dns = false)")
            )
        return await self._lookup(domain)

    async def _lookup(self, domain: str) -> list[Hop]:
        found = await self.dns.mx(domain)
        if found.status is Status.NXDOMAIN:
            raise RouteError(failed("5.1.2", f"Host or domain name not found: {domain} (NXDOMAIN)"))
        if found.temporary:
            raise RouteError(
                deferred("4.4.3", f"Host or domain name lookup failed for {domain}: {found.error}")
            )
        names = [mx.exchange for mx in found.records] if found.ok else [domain]  # implicit MX
        if "" in names:
            raise RouteError(_null_mx(domain))
        looked = await asyncio.gather(*(self.dns.addresses(name) for name in names))
        hops = [
            Hop(name, self.port, address=address)
            for name, addresses in zip(names, looked, strict=True)
            for address in addresses.records
        ]
        if hops:
            return hops
        failures = [f"{n}: {a.error}" for n, a in zip(names, looked, strict=True) if a.temporary]
        if failures:
            raise RouteError(
                deferred("4.4.3", f"Host address lookup failed for {domain}: {'; '.join(failures)}")
            )
        raise RouteError(
            failed("5.4.4", f"No address for the mail hosts of {domain}: {', '.join(names)}")
        )

    async def configured(self, targets: Sequence[tuple[str, int]], key: str) -> list[Hop]:
        """Hops for hosts the configuration names under ``key``, in its order, each
        name's IPv4 then IPv6 addresses (as for MX hosts).

        IP addresses and localhost names need no lookup (`petrel.dns.literal_addresses`).
        A name with no address is the operator's mistake, not the recipient's: the mail
        is deferred (4.4.3) with a text naming the key, never bounced for a typo.
        """
        looked = await asyncio.gather(*(self._host(host) for host, _ in targets))
        hops = [
            Hop(host, port, address=address)
            for (host, port), found in zip(targets, looked, strict=True)
            for address in found.records
        ]
        if hops:
            return hops
        why = "; ".join(
            f"{host}: {found.error if found.temporary else _none(found.status)}"
            for (host, _), found in zip(targets, looked, strict=True)
        )
        raise RouteError(deferred("4.4.3", f"No address for {key}: {why or 'no host given'}"))

    async def _host(self, host: str) -> petrel.dns.Lookup[str]:
        if self.use_dns:
            return await self.dns.host_addresses(host)
        literal = petrel.dns.literal_addresses(host)
        if literal is not None:
            return petrel.dns.Lookup(Status.OK, literal)
        return petrel.dns.Lookup(
            Status.TEMPERROR, error="not looked up, DNS is off (delivery.dns = false)"
        )


def _none(status: Status) -> str:
    """A definite "no address" as a deferral text says it."""
    return "no such name (NXDOMAIN)" if status is Status.NXDOMAIN else "no A or AAAA record"


def _null_mx(domain: str) -> Result:
    return failed("5.1.10", f"Domain {domain} does not accept mail (null MX, RFC 7505)")


def remote_route(config: Config, address: str) -> Route:
    """A remote recipient's route: its ``domains.lmtp`` target, else the smarthost, else MX."""
    domain = address.rpartition("@")[2].lower()
    if domain in config.domains.lmtp:
        return Route("lmtp", config.domains.lmtp[domain])
    relay = config.relay
    if relay is not None:
        return Route("smarthost", f"{relay.smarthost_host}:{relay.smarthost_port}")
    return Route("mx", domain)


class SmtpTransport:
    """Delivers jobs route by route; a route's sessions share a concurrency limit."""

    def __init__(
        self, config: Config, dns: petrel.dns.Resolver, *, store: QueueStore | None = None
    ) -> None:
        self.config = config
        self.dns = dns
        self.store = store  # where a job without its body reads it
        self.delivery = config.delivery
        self.hostname = config.server.hostname
        self.resolver = Resolver(config.delivery, dns)
        self._limits: dict[str, asyncio.Semaphore] = {}

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration, for the sessions started from now on."""
        self.config = config
        self.delivery = config.delivery
        self.hostname = config.server.hostname
        self.resolver = Resolver(config.delivery, self.dns)
        self._limits = {}  # destination_concurrency: new semaphores; running lanes keep theirs

    # -- routes ----------------------------------------------------------------------

    def route_for(self, address: str) -> Route:
        return remote_route(self.config, address)

    async def _hops(self, route: Route) -> list[Hop]:
        if route.kind == "mx":
            return await self.resolver.hops(route.target)
        if route.kind == "lmtp" and route.target.startswith("/"):
            return [Hop("localhost", 0, route.target)]
        host, _, port = route.target.rpartition(":")  # "host:port", checked by config.py
        return await self.resolver.configured([(host.strip("[]"), int(port))], self._key(route))

    def _key(self, route: Route) -> str:
        """The configuration key a smarthost or LMTP route comes from, for its texts."""
        if route.kind == "lmtp":
            for domain, target in self.config.domains.lmtp.items():
                if target == route.target:
                    return f"domains.lmtp.{domain}"
        return "relay.smarthost"

    # -- delivery ------------------------------------------------------------------------

    async def deliver(self, route: Route, jobs: Sequence[BaseJob]) -> list[list[Result]]:
        """Per job, one result per recipient; never raises for anything the peer does.

        A job that is already a `Job` of this module has its ``results`` filled in too.
        """
        work = [
            job if isinstance(job, Job) else Job(job.envelope, job.recipients, job.body)
            for job in jobs
        ]
        await self._deliver(route, await self._with_bodies(work))
        return [
            [
                r if r is not None else deferred("4.3.0", "no result from the transport")
                for r in job.results
            ]
            for job in work
        ]

    async def _with_bodies(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose text could be had: read from the store when not given (in a
        thread); an unreadable or corrupt spool file is each recipient's result."""
        loop = asyncio.get_running_loop()
        ready: list[Job] = []
        for job in jobs:
            if job.body is None:
                if self.store is None:
                    job.settle_open(deferred("4.3.0", "no message text for the transport"))
                    continue
                try:
                    job.body = await loop.run_in_executor(
                        None, self.store.read_body, job.envelope.queue_id
                    )
                except (OSError, ValueError) as exc:
                    job.settle_open(local_error(exc))
                    continue
            ready.append(job)
        return ready

    async def _deliver(self, route: Route, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        try:
            hops = await self._hops(route)
        except RouteError as exc:
            for job in jobs:
                job.settle_open(exc.result)
            return
        limit = self.delivery.destination_concurrency
        lanes = [list(jobs[i::limit]) for i in range(min(limit, len(jobs)))]
        semaphore = self._limits.setdefault(route.key, asyncio.Semaphore(limit))
        await asyncio.gather(*(self._lane(route, hops, lane, semaphore) for lane in lanes))

    async def _lane(
        self, route: Route, hops: list[Hop], jobs: list[Job], semaphore: asyncio.Semaphore
    ) -> None:
        """One session at a time through the hops until every job has its results."""
        async with semaphore:
            pending = [job for job in jobs if job.open_indexes()]
            last = deferred("4.4.1", "no host could be tried")
            for hop in hops:
                if not pending:
                    break
                session = _Session(self, route, hop)
                try:
                    await session.open()
                    while pending:
                        await session.transaction(pending[0])
                        pending.pop(0)
                    await session.quit()
                except _SessionError as exc:
                    last = exc.result
                except (OSError, EOFError, TimeoutError, RemoteProtocolError) as exc:
                    last = deferred("4.4.2", session.lost(exc), f"dns; {hop.host}")
                finally:
                    session.close()
                if last.outcome == FAILED and pending:
                    break  # a permanent session-level refusal: no other hop will change it
            for job in pending:
                job.settle_open(last)


class _Session:
    """One connection to one hop, driving a ``ClientConnection``."""

    def __init__(self, transport: SmtpTransport, route: Route, hop: Hop) -> None:
        self.t = transport
        self.route = route
        self.hop = hop
        self.lmtp = route.kind == "lmtp"
        self.conn = ClientConnection(lmtp=self.lmtp)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.stage = "connect"
        self.peer = str(hop)
        self.tls = False
        self.remote_mta = f"dns; {hop.host}"

    # -- plumbing --------------------------------------------------------------------

    async def _connect(self) -> None:
        timeout = self.t.delivery.connect_timeout
        if self.hop.path is not None:
            coro = asyncio.open_unix_connection(self.hop.path)
        else:
            # An IP address, found by petrel.dns: asyncio connects without getaddrinfo.
            assert self.hop.address is not None
            coro = asyncio.open_connection(self.hop.address, self.hop.port)
        self.reader, writer = await asyncio.wait_for(coro, timeout)
        self.writer = writer
        sockname = writer.get_extra_info("peername")
        if isinstance(sockname, tuple):
            self.peer = f"{self.hop.host}[{sockname[0]}]:{sockname[1]}"

    async def _write(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.t.delivery.command_timeout)

    async def _reply(self) -> smtp.ServerReply:
        assert self.reader is not None
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, smtp.ServerReply)
                return event
            data = await asyncio.wait_for(self.reader.read(65536), self.t.delivery.command_timeout)
            if not data:
                raise EOFError("connection closed by peer")
            self.conn.receive_data(data)

    async def _command(self, verb: str, argument: str = "") -> smtp.Reply:
        self.stage = verb
        await self._write(self.conn.send_command(verb, argument))
        return (await self._reply()).reply

    def lost(self, exc: BaseException) -> str:
        what = (
            "timed out" if isinstance(exc, TimeoutError) else f"lost ({exc or type(exc).__name__})"
        )
        if self.stage == "connect":
            return (
                f"connect to {self.peer}: {'timed out' if isinstance(exc, TimeoutError) else exc}"
            )
        return f"conversation with {self.peer} {what} while sending {self.stage}"

    def _said(self, reply: smtp.Reply, stage: str) -> str:
        return f"host {self.peer} said: {_reply_text(reply)} (in reply to {stage} command)"

    def result(self, reply: smtp.Reply, stage: str) -> Result:
        """A reply to a recipient-bearing command as that recipient's result."""
        status = reply.status or f"{reply.code // 100}.0.0"
        outcome = {2: DELIVERED, 4: DEFERRED}.get(reply.code // 100, FAILED)
        proto = "lmtp" if self.lmtp else "smtp"
        return Result(
            outcome,
            status,
            self._said(reply, stage)
            if outcome != DELIVERED
            else f"{self.peer}: {_reply_text(reply)}",
            f"{proto}; {_reply_text(reply)}",
            self.remote_mta,
            relayed=outcome == DELIVERED and not self.lmtp and not self.conn.supports("DSN"),
        )

    def _session_error(self, reply: smtp.Reply, stage: str) -> _SessionError:
        result = self.result(reply, stage)
        if result.outcome == DELIVERED:  # an unexpected positive code where none belongs
            result = deferred("4.5.0", self._said(reply, stage), self.remote_mta)
        return _SessionError(result)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- session start ----------------------------------------------------------------

    async def open(self) -> None:
        await self._connect()
        greeting = (await self._reply()).reply
        if greeting.code != 220:
            # Postfix: a refusing greeting sends us on to the next MX, never bounces.
            raise _SessionError(
                deferred(
                    "4.4.2" if greeting.code < 500 else "4.3.0",
                    self._said(greeting, "initial greeting"),
                    self.remote_mta,
                )
            )
        await self._hello()
        if self.route.kind != "lmtp":
            await self._starttls()
            await self._auth()

    async def _hello(self) -> None:
        name = self.t.hostname
        if self.lmtp:
            reply = await self._command("LHLO", name)
        else:
            reply = await self._command("EHLO", name)
            if reply.code // 100 == 5:
                reply = await self._command("HELO", name)
        if reply.code != 250:
            raise self._session_error(reply, self.stage)

    def _tls_mode(self) -> str:
        """ "none", "may" (opportunistic, unverified) or "verify" (required and verified)."""
        relay = self.t.config.relay
        if self.route.kind == "smarthost" and relay is not None:
            return "verify" if relay.tls == "required" else "may"
        return "verify" if self.t.delivery.tls_verify else "may"

    async def _starttls(self) -> None:
        mode = self._tls_mode()
        if not self.conn.supports("STARTTLS"):
            if mode == "verify" and self.route.kind == "smarthost":
                raise _SessionError(
                    deferred(
                        "4.7.4",
                        f"TLS is required, but {self.peer} does not offer STARTTLS",
                        self.remote_mta,
                    )
                )
            return
        reply = await self._command("STARTTLS")
        if reply.code != 220:
            if mode == "verify" and self.route.kind == "smarthost":
                raise self._session_error(reply, "STARTTLS")
            return  # opportunistic: carry on in the clear, as Postfix's "may" level does
        context = ssl.create_default_context()
        if mode != "verify":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        assert self.writer is not None
        self.stage = "TLS handshake"
        await asyncio.wait_for(
            self.writer.start_tls(context, server_hostname=self.hop.host),
            self.t.delivery.command_timeout,
        )
        self.conn.tls_established()
        self.tls = True
        await self._hello()

    async def _auth(self) -> None:
        """AUTH for the smarthost with the strongest mechanism it offers, as Postfix and
        Cyrus do: SCRAM-SHA-256, then PLAIN, then LOGIN (``client/sasl.py``). A server
        that lists no AUTH at all is tried with PLAIN."""
        relay = self.t.config.relay
        if self.route.kind != "smarthost" or relay is None or relay.username is None:
            return
        assert relay.password_file is not None
        password = relay.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        offered = self.conn.auth_mechanisms
        name = choose_mechanism("auto", offered) if offered else "PLAIN"
        if name is None:
            raise _SessionError(
                deferred(
                    "4.7.0",
                    f"{self.peer} offers no SASL mechanism we know: {offered}",
                    self.remote_mta,
                )
            )
        mech = make_mechanism(name, relay.username, password)
        initial = mech.initial_response()
        if initial is None:
            reply = await self._command("AUTH", name)
        else:
            encoded = base64.b64encode(initial).decode("ascii") or "="
            reply = await self._command("AUTH", f"{name} {encoded}")
        try:
            while reply.code == 334:
                try:
                    challenge = base64.b64decode(reply.lines[0].strip(), validate=True)
                except (binascii.Error, ValueError):
                    raise AuthError(f"{name}: the 334 challenge is not base64") from None
                response = base64.b64encode(mech.respond(challenge)).decode("ascii")
                await self._write(self.conn.send_auth_response(response))
                reply = (await self._reply()).reply
            if reply.code == 235:
                mech.success(None)
        except AuthError as exc:
            raise _SessionError(
                deferred("4.7.0", f"SASL authentication failed; {exc}", self.remote_mta)
            ) from None
        if reply.code != 235:
            raise _SessionError(
                deferred(
                    "4.7.0",
                    f"SASL authentication failed; {self._said(reply, 'AUTH')}",
                    self.remote_mta,
                )
            )

    # -- one message ------------------------------------------------------------------

    async def _text(self, job: Job) -> bytes:
        """The message as this peer may take it: 7-bit MIME if it lacks 8BITMIME.

        RFC 6152 §3 forbids 8-bit text to such a peer. The bytes decide, not ``BODY=``
        (clients declare 7BIT and send 8-bit); BINARYMIME cannot be converted and is
        refused in `_refusal` instead.
        """
        body = job.body
        assert body is not None  # read by SmtpTransport._with_bodies
        if self.conn.supports("8BITMIME") or job.envelope.body == "BINARYMIME":
            return body
        if job.seven_bit is None:
            queue_id = job.envelope.queue_id
            # A thread, so a big message does not stall every other session of the loop.
            job.seven_bit = await asyncio.to_thread(to_7bit, body, self.t.hostname, queue_id)
            if job.seven_bit is not body:
                log_event(
                    log,
                    "converted-7bit",
                    queue_id=queue_id,
                    relay=self.peer,
                    size=len(body),
                    converted_size=len(job.seven_bit),
                )
        return job.seven_bit

    def _refusal(self, job: Job, text: bytes) -> Result | None:
        """Reasons the peer cannot take this message at all, decided before MAIL."""
        env = job.envelope
        if env.smtputf8 and not self.conn.supports("SMTPUTF8"):
            return failed(
                "5.6.7",
                f"SMTPUTF8 is required, but was not offered by {self.peer}",
                self.remote_mta,
            )
        if env.body == "BINARYMIME" and not (
            self.conn.supports("BINARYMIME") and self.conn.supports("CHUNKING")
        ):
            return failed(
                "5.6.3",
                f"BINARYMIME is required, but was not offered by {self.peer}",
                self.remote_mta,
            )
        limit = self.conn.max_size
        if limit is not None and len(text) > limit:
            return failed(
                "5.3.4",
                f"message size {len(text)} exceeds size limit {limit} of {self.peer}",
                self.remote_mta,
            )
        return None

    def _envelope(self, job: Job, text: bytes) -> tuple[smtp.MailFrom, list[smtp.RcptTo]]:
        """The job's envelope as the core's transaction takes it; the core adds what
        the peer offers (SIZE, BODY, DSN, DELIVERBY) and leaves out the rest."""
        env = job.envelope
        # Like Postfix's cleanup, the content decides: a client that said nothing
        # (or 7BIT) but sent 8-bit bytes is passed on as 8BITMIME, not as a lie.
        body = "8BITMIME" if env.body == "7BIT" and not text.isascii() else env.body
        by = None
        if env.by is not None:
            # RFC 2852 §4.2: pass on what is left of the time, not the original by-time.
            seconds, mode = env.by
            left = int(seconds - (time.time() - env.received_at))
            by = (max(left, 1) if mode.startswith("R") else left, mode)
        mail = smtp.MailFrom(
            env.sender,
            size=len(text),
            body=None if body == "7BIT" else body,
            smtputf8=env.smtputf8,
            ret=env.ret,
            envid=env.envid,
            by=by,
        )
        rcpts = [
            smtp.RcptTo(r.address, tuple(r.notify or ()), r.orcpt)
            for r in (job.recipients[i] for i in job.open_indexes())
        ]
        return mail, rcpts

    async def transaction(self, job: Job) -> None:
        """MAIL, RCPT…, DATA (pipelined when offered) and the text; fills ``job.results``."""
        indexes = job.open_indexes()
        if not indexes:
            return
        try:
            text = await self._text(job)
        except ConversionError as exc:
            job.settle_open(
                failed(
                    "5.6.5",
                    f"8-bit message not converted to 7 bit for {self.peer}, which does not "
                    f"offer 8BITMIME: {exc}",
                    self.remote_mta,
                )
            )
            return
        refusal = self._refusal(job, text)
        if refusal is not None:
            job.settle_open(refusal)
            return
        mail, rcpts = self._envelope(job, text)
        txn = smtp.ClientTransaction(
            self.conn, mail, rcpts, text, bdat=job.envelope.body == "BINARYMIME"
        )
        while not txn.done:  # mox's DeliverMultiple: this loop owns the transaction
            wire = b"".join(txn.commands())
            if txn.text_due:
                wire += txn.send_text()
            self.stage = txn.expected_stage or self.stage
            if wire:
                await self._write(wire)
            if not txn.done:
                txn.receive(await self._reply())
        for i, outcome in zip(indexes, txn.outcomes, strict=True):
            if outcome is not None:
                job.results[i] = self.result(outcome.reply, outcome.stage)
        if txn.needs_reset:
            await self._command("RSET")

    async def quit(self) -> None:
        # Everything was delivered already; a sloppy goodbye changes nothing.
        with contextlib.suppress(OSError, EOFError, TimeoutError, RemoteProtocolError):
            await asyncio.wait_for(self._command("QUIT"), 10.0)


def _reply_text(reply: smtp.Reply) -> str:
    status = f" {reply.status}" if reply.status else ""
    return f"{reply.code}{status} {' '.join(reply.lines)}"
