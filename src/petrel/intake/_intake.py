"""`Intake`: the one way a message enters the queue (Postfix's cleanup, chasquid's Put).

Every producer — an SMTP session, ``petrel sendmail``, Petrel's own delivery notices —
goes through the same steps: the envelope's recipients come from `expand_recipients`
(aliases applied once, duplicates dropped, ORCPT kept), `Intake.begin` writes the trace
field, the text streams through a `Draft` (header section scanned once: hop count and,
for submission, the missing Date/Message-ID added), and `Intake.commit` checks the hop
limit, makes the message durable and hands it to delivery.

Mail that the inbound checks cover (`Checker`: SPF begun at MAIL, DKIM, DMARC, ARC) is
held whole until its end instead: `Intake.commit` then checks it, lets
`policy.authentication.judge` decide (refuse, deliver to Junk, deliver), and writes it
behind our trace field and our Authentication-Results field, without any field that
forged our authserv-id.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from petrel import smtp
from petrel.config import Config
from petrel.dkim import Signer
from petrel.dkim.keys import SigningKey
from petrel.log import log_event
from petrel.mailauth.checks import Checker, SpfPair
from petrel.policy.authentication import judge
from petrel.queue import Envelope, QueueStore, QueueWriter, Recipient, new_queue_id

from .direct import MaildirCopies, direct_recipients
from .headers import HeaderSection, header_values, remove_forged_results, split_header_block
from .trace import Origin, received_field, rfc5322_date

__all__ = [
    "Accepted",
    "CheckRefused",
    "Draft",
    "Intake",
    "Submitter",
    "TooManyHops",
    "expand_recipients",
    "new_envelope",
]

log = logging.getLogger("petrel.intake")


class Submitter(Protocol):
    """Who takes committed mail: the queue manager, or a worker's poke to its parent."""

    def submit(self, envelope: Envelope) -> None: ...

    def delivered(self, envelope: Envelope, recipients: Sequence[Recipient]) -> None:
        """``recipients`` of the message were delivered at intake (direct delivery)."""
        ...

    def etrn(self, node: str) -> smtp.Reply: ...


class TooManyHops(Exception):
    """More Received fields than ``delivery.max_received``: a mail loop (RFC 5321 §6.3)."""

    def __init__(self, hops: int) -> None:
        super().__init__(f"{hops} Received header fields")
        self.hops = hops


class CheckRefused(Exception):
    """The inbound checks refuse the message (DMARC p=reject, SPF with spf_reject)."""

    def __init__(self, reply: smtp.Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Accepted(NamedTuple):
    """A recipient as accepted: the address given, what aliases made of it, DSN options."""

    given: str
    finals: Sequence[str]
    orcpt: str | None = None
    notify: tuple[str, ...] | None = None


def arc_key(keys: Sequence[SigningKey], hostname: str, ours: frozenset[str]) -> SigningKey | None:
    """The ``[[dkim.sign]]`` key that seals forwarded mail: an RSA key (ARC signs with
    rsa-sha256 only) of the hostname's domain, else of one of our domains."""
    rsa = [k for k in keys if k.algorithm == "rsa"]
    for key in rsa:
        if hostname == key.domain or hostname.endswith("." + key.domain):
            return key
    return next((k for k in rsa if k.domain in ours), None)


def expand_recipients(accepted: Iterable[Accepted]) -> list[Recipient]:
    """The envelope's recipients: each final address once, with the ORCPT of RFC 3461.

    A recipient an alias changed keeps the address given as ``rfc822;<given>``, so its
    DSN names what the sender wrote.
    """
    recipients: list[Recipient] = []
    seen: set[str] = set()
    for given, finals, orcpt, notify in accepted:
        for final in finals:
            key = final.lower()
            if key in seen:
                continue
            seen.add(key)
            original = orcpt
            if original is None and key != given.lower():
                original = f"rfc822;{given}"
            recipients.append(Recipient(final, orcpt=original, notify=notify))
    return recipients


def new_envelope(
    sender: str,
    params: smtp.MailParams,
    accepted: Iterable[Accepted],
    *,
    protocol: str,
    client_ip: str,
    client_helo: str,
    client_rdns: str | None = None,
    auth: str | None = None,
    auth_user: str | None = None,
) -> Envelope:
    """The envelope of one SMTP transaction: MAIL's parameters, the recipients after
    aliases, and the facts about the client its Received field and DSNs report."""
    return Envelope(
        queue_id=new_queue_id(),
        sender=sender,
        recipients=expand_recipients(accepted),
        received_at=time.time(),
        body=params.body or "7BIT",
        smtputf8=params.smtputf8,
        size=params.size,
        ret=params.ret,
        envid=params.envid,
        by=params.by,
        client_ip=client_ip,
        client_helo=client_helo,
        client_rdns=client_rdns,
        protocol=protocol,
        auth=auth,
        auth_user=auth_user,
    )


class HoldBudget:
    """The octets strangers' held messages may take in one process, all together.

    A message checked at its end (SPF, DKIM, DMARC) is held whole until then, so without
    a bound a few hundred slow senders of big messages could take the machine's memory.
    Past the budget a write fails with ENOMEM: that message gets ``452 4.3.1`` (the
    sender retries later), the session and every other message go on.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise OSError(errno.ENOMEM, "too much mail held for checking at once")
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


HELD = HoldBudget(256 * 1024 * 1024)


class Draft:
    """One message on its way in: the text streams to the spool as it arrives.

    With ``fix_header`` (submission, RFC 6409 §8; local submission) the text is held
    back until the header section is complete, so the fields it lacks can go in front.
    With ``sign`` (a message the DKIM signer may sign) the whole text is held until
    commit, since the signature goes in front and covers the body. With ``checks`` (the
    SPF task of an inbound message) the whole text is held too, and the spool file is
    begun only at `Intake.commit`, once the checks have said what to write. Either
    costs memory up to ``limits.message_size`` for such a message. Writes may raise
    OSError (a full disk): then `abort`.
    """

    __slots__ = (
        "_checks",
        "_default_from",
        "_envelope",
        "_final",
        "_fix",
        "_header",
        "_held",
        "_held_budget",
        "_hostname",
        "_sign",
        "_spool",
        "_trace",
        "_writer",
    )

    def __init__(
        self,
        spool: QueueStore,
        writer: QueueWriter | None,
        envelope: Envelope,
        trace: bytes,
        hostname: str,
        fix_header: bool,
        default_from: str | None,
        sign: bool = False,
        checks: asyncio.Task[SpfPair] | None = None,
        outside: bool = False,
    ) -> None:
        self._spool = spool
        self._writer = writer  # None until the checks are done (then `_release` begins it)
        self._envelope = envelope
        self._trace = trace  # written already when there is a writer
        self._hostname = hostname
        self._header = HeaderSection()
        # ``outside``: a stranger's mail, its header held only to drop forged results.
        held = fix_header or sign or checks or outside
        self._held: bytearray | None = bytearray() if held else None
        # A stranger's held text counts against the process's `HELD` budget.
        self._held_budget: int | None = 0 if (checks or outside) else None
        self._fix = fix_header
        self._sign = sign
        self._default_from = default_from
        self._checks = checks
        self._final: bytes | None = None  # the held text once made final (`_text`)

    @property
    def envelope(self) -> Envelope:
        return self._envelope

    @property
    def size(self) -> int:
        """Octets spooled (or held) so far, trace field included."""
        if self._writer is None:
            return len(self._trace) + len(self._final or self._held or b"")
        return self._writer.size

    @property
    def hops(self) -> int:
        """Received fields the message will carry, ours included."""
        return self._header.received_fields + 1

    def write(self, data: bytes) -> None:
        self._header.feed(data)
        if self._held is None:
            assert self._writer is not None
            self._writer.write(data)
            return
        if self._held_budget is not None:
            HELD.take(len(data))
            self._held_budget += len(data)
        self._held += data
        if self._header.done and not self._sign and self._checks is None:
            self._release()

    def abort(self) -> None:
        """Drop the message; safe to call more than once."""
        self._held = self._final = None
        self._let_go()
        if self._checks is not None:
            self._checks.cancel()
        if self._writer is not None:
            self._writer.abort()

    def _release(self, above_trace: bytes = b"", below_trace: bytes = b"") -> None:
        """Write the held-back text; ``above_trace`` (an ARC set) goes before our
        Received field, ``below_trace`` (signatures, our Authentication-Results) after."""
        text = self._text()
        self._held = self._final = None
        self._let_go()
        if text is None:
            return
        if self._writer is None:
            self._writer = self._spool.begin(self._envelope)
            self._writer.write(above_trace + self._trace + below_trace)
        else:
            self._writer.write(below_trace)
        self._writer.write(text)  # a large text goes to the file without another copy

    def _let_go(self) -> None:
        if self._held_budget:
            HELD.give(self._held_budget)
            self._held_budget = 0

    def _text(self) -> bytes | None:
        """The held-back text behind the fields it lacks (RFC 6409 §8.2–8.3), without
        the Authentication-Results fields that forge ours. Made once, so the text
        checked and signed is the text written, and the held bytes are let go: a big
        message is in memory once, not twice."""
        if self._final is not None:
            return self._final
        held = self._held
        if held is None:
            return None
        if self._fix:
            self._fix = False
            names = self._header.field_names()
            added = b""
            if b"date" not in names:
                added += f"Date: {rfc5322_date()}\r\n".encode()
            if b"message-id" not in names:
                msgid = f"{self.envelope.queue_id}.{secrets.token_hex(4)}@{self._hostname}"
                added += f"Message-ID: <{msgid}>\r\n".encode()
            if self._default_from is not None and b"from" not in names:
                added += f"From: {self._default_from}\r\n".encode()
            held[:0] = added
        self._final = remove_forged_results(bytes(held), self._hostname)
        self._held = None
        return self._final


class Intake:
    """Begin, stream, commit: the same path into the queue for every kind of producer."""

    def __init__(
        self,
        config: Config,
        spool: QueueStore,
        submitter: Submitter,
        checker: Checker | None = None,
    ) -> None:
        """ConfigError if a ``[[dkim.sign]]`` key cannot be read (checked at start and
        reload before any intake is made, so only a key changed since then)."""
        self.hostname = config.server.hostname
        self.max_received = config.delivery.max_received
        self.authentication = config.authentication
        HELD.limit = config.limits.checks_memory  # one budget per process; reload sets it
        self.spool = spool
        self.submitter = submitter
        self.local_domains = config.domains.local
        # Direct delivery (intake/direct.py) needs a store that writes copies with a commit.
        self.direct = config.delivery.direct if spool.copier is not None else 0
        self.signer = Signer.load(config.dkim)
        self.checker = checker  # the inbound checks; None: `petrel sendmail`, or checks off
        self.ours = frozenset(config.domains.local) | frozenset(config.domains.lmtp)
        self.arc_key = arc_key(self.signer.keys, self.hostname, self.ours)

    def start_checks(self, ip: str, sender: str, helo: str) -> asyncio.Task[SpfPair] | None:
        """At MAIL of a message the inbound checks cover: SPF begins now (None when
        the checks are off); hand the task to `begin`."""
        if self.checker is None or not self.authentication.checks:
            return None
        return self.checker.start_spf(ip, sender, helo, self.hostname)

    def has_room(self, size: int) -> bool:
        """Can the spool take a message of ``size`` octets now (a free-space floor)?"""
        return self.spool.has_room(size)

    def begin(
        self,
        envelope: Envelope,
        origin: Origin | None,
        *,
        given: Sequence[str] = (),
        fix_header: bool = False,
        default_from: str | None = None,
        sign: bool = False,
        checks: asyncio.Task[SpfPair] | None = None,
        outside: bool = False,
    ) -> Draft:
        """A draft whose first line is our Received field (``given``: the addresses as
        the client gave them, for its ``for`` clause). ``sign``: the submitter's mail
        is ours to sign (`Policy.signs_for`), when its From: has a key; ``checks``: from
        `start_checks`; ``outside``: a client outside our trust boundary (RFC 8601 §5),
        whose Authentication-Results fields claiming our hostname are removed even
        with the checks off. OSError if the spool refuses."""
        for_rcpt = given[0] if len(given) == 1 else None
        trace = received_field(
            self.hostname, envelope.queue_id, envelope.received_at, origin, for_rcpt
        )
        sign = sign and bool(self.signer.keys)
        if checks is not None:
            return Draft(
                self.spool, None, envelope, trace, self.hostname, fix_header, default_from,
                sign, checks,
            )  # fmt: skip
        writer = self.spool.begin(envelope)
        try:
            writer.write(trace)
        except BaseException:
            writer.abort()
            raise
        return Draft(
            self.spool, writer, envelope, trace, self.hostname, fix_header, default_from, sign,
            outside=outside,
        )  # fmt: skip

    async def commit(self, draft: Draft, **context: str) -> None:
        """Return once the message is durable and handed to delivery.

        Raises TooManyHops (the draft is dropped), CheckRefused (the checks refuse it) or
        OSError (nothing was queued). ``context`` goes into the ``accepted`` log line
        (e.g. the session id).
        """
        if draft.hops > self.max_received:
            draft.abort()
            raise TooManyHops(draft.hops)
        envelope = draft.envelope
        try:
            signatures = await self._signatures(draft)
            results = await self._check(draft, context)
            draft._release(await self._seal(draft, results), signatures + results)
        except BaseException:
            draft.abort()
            raise
        assert draft._writer is not None
        copies = self._copies(draft._writer, envelope)
        await self.spool.commit(draft._writer, copies)
        log_event(
            log,
            "accepted",
            logging.INFO,
            **context,
            queue_id=envelope.queue_id,
            sender=envelope.sender or "<>",
            nrcpt=len(envelope.recipients) + (len(copies.delivered) if copies else 0),
            size=draft.size,
        )
        if copies is not None:
            for recipient in copies.delivered:
                log_event(
                    log,
                    "delivered",
                    queue_id=envelope.queue_id,
                    to=recipient.address,
                    relay="local",
                    status="2.0.0",
                    direct="yes",
                )
            self.submitter.delivered(envelope, copies.delivered)
            if not envelope.recipients:  # all in their mailboxes: nothing was queued
                return
        self.submitter.submit(envelope)

    async def _signatures(self, draft: Draft) -> bytes:
        """DKIM-Signature fields for a draft that may be signed and has a key for its
        From: domain; computed in a thread (body hash and RSA take milliseconds)."""
        text = draft._text() if draft._sign else None
        if text is None:
            return b""
        fields, _ = split_header_block(text)
        keys = self.signer.keys_for(header_values(fields, "from"))
        if not keys:
            return b""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.signer.sign, text, keys)

    async def _check(self, draft: Draft, context: dict[str, str]) -> bytes:
        """Run the inbound checks of a held draft: our Authentication-Results field,
        the Junk mark on the envelope, or CheckRefused."""
        task, text = draft._checks, draft._text()
        if task is None or text is None or self.checker is None:
            return b""
        envelope = draft.envelope
        findings = await self.checker.check(
            task,
            envelope.sender,
            text,  # as received, less the fields forging ours
            self.hostname,
            queue_id=envelope.queue_id,
            **context,
        )
        judgement = judge(self.authentication, findings.spf.mail_from, findings.dmarc)
        if judgement.refusal is not None:
            raise CheckRefused(judgement.refusal)
        envelope.junk = judgement.junk
        return findings.field

    async def _seal(self, draft: Draft, results: bytes) -> bytes:
        """An ARC set (RFC 8617) for a checked message that an alias forwards to another
        domain, so its next hop can trust our results; with no RSA ``[[dkim.sign]]``
        key of ours, none."""
        key = self.arc_key
        if not results or key is None or self.checker is None:
            return b""
        remote = [
            r
            for r in draft.envelope.recipients
            if r.address.rpartition("@")[2].lower() not in self.ours
        ]
        text = draft._text()
        if not remote or text is None:
            return b""
        message = draft._trace + results + text
        return await self.checker.seal(message, key, self.hostname)

    def _copies(self, writer: QueueWriter, envelope: Envelope) -> MaildirCopies | None:
        """The direct recipients' copies, taken out of the envelope (intake/direct.py)."""
        if not self.direct:
            return None
        text = writer.text
        if text is None:  # too big to be held: the queue streams it
            return None
        chosen = direct_recipients(envelope, self.local_domains, self.direct)
        if not chosen:
            return None
        taken = {id(r) for r in chosen}
        envelope.recipients = [r for r in envelope.recipients if id(r) not in taken]
        return MaildirCopies(envelope, chosen, text)

    async def put(
        self,
        envelope: Envelope,
        message: bytes,
        origin: Origin | None,
        *,
        given: Sequence[str] = (),
        fix_header: bool = False,
        default_from: str | None = None,
        sign: bool = False,
        **context: str,
    ) -> None:
        """`begin`, write and `commit` a message that is already whole in memory."""
        draft = self.begin(
            envelope,
            origin,
            given=given,
            fix_header=fix_header,
            default_from=default_from,
            sign=sign,
        )
        try:
            draft.write(message)
        except BaseException:
            draft.abort()
            raise
        await self.commit(draft, **context)
