"""Who may do what: local domains, recipients, relaying, VRFY/EXPN exposure.

The policy answers every "may this client do this" question of a session through typed
calls — `Policy.check_mail`, `Policy.check_rcpt`, `Policy.check_etrn`, `Policy.vrfy`,
`Policy.expn`, `mail_auth` — each returning the refusal as an SMTP reply (it is the
server's judge) or what was allowed. AUTH credentials are checked by `auth.Authenticator`.
It reads only its own stores (the aliases and users, in files or the shared database)
and never writes, except the AUTH throttle's counts.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from petrel.config import Config
from petrel.smtp import Address, Reply, reply
from petrel.smtp import replies as texts

from .aliases import AliasError, AliasTable
from .users import User, UserStore, open_users

log = logging.getLogger("petrel.policy")

# Local parts that would ask us to route mail onward (the "percent hack", UUCP bang
# paths, a quoted "@") are relay attempts when they arrive at a local domain.
_ROUTING_CHARACTERS = frozenset("%!@")


@dataclass(frozen=True, slots=True)
class Client:
    """What the policy needs to know about the peer of a session."""

    ip: str
    authenticated: bool = False


class Policy:
    def __init__(self, config: Config, aliases: AliasTable, users: UserStore | None = None) -> None:
        self.hostname = config.server.hostname
        self.users = users if users is not None else open_users(config)
        self.local_domains = config.domains.local
        self.lmtp_domains = frozenset(config.domains.lmtp)
        self.relay_networks = config.domains.relay_networks
        self.vrfy_exposure = config.policy.vrfy
        self.expn_exposure = config.policy.expn
        self.sender_login_match = config.auth.sender_login_match
        self.inbound_checks = config.authentication.checks
        self.aliases = aliases

    # -- addresses --------------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.local_domains

    def is_local(self, address: str) -> bool:
        _, _, domain = address.rpartition("@")
        return self.is_local_domain(domain)

    def canonical(self, address: Address) -> str:
        """The address the queue stores: bare ``<Postmaster>`` gets our hostname."""
        if address.is_bare_postmaster:
            return f"postmaster@{self.hostname}"
        return str(address)

    def may_relay(self, client: Client) -> bool:
        if client.authenticated:
            return True
        try:
            ip = ipaddress.ip_address(client.ip)
        except ValueError:
            return False
        return any(ip in net for net in self.relay_networks)

    def signs_for(self, client: Client) -> bool:
        """Is this client's mail ours to DKIM-sign? Authenticated users and
        ``relay_networks`` send as our domains; anyone else on port 25 is inbound mail."""
        return self.may_relay(client)

    def checks_inbound(self, client: Client, mode: str) -> bool:
        """Does mail from this client get SPF, DKIM, DMARC and ARC checks? Mail from
        strangers on an MX listener does; users, relay networks and LMTP do not."""
        return self.inbound_checks and mode == "smtp" and not self.may_relay(client)

    # -- MAIL, ETRN -------------------------------------------------------------------

    def check_mail(
        self, client: Client, sender: str, auth_user: str | None, submission: bool
    ) -> Reply | None:
        """May this client start a transaction from ``sender`` (``""`` for ``<>``)?

        On ``submission``/``submissions`` listeners AUTH comes first (RFC 6409 §4.3); an
        authenticated user's sender must be their own address or a local alias that
        reaches them (RFC 6409 §6.1), unless ``auth.sender_login_match = false``. ``<>``
        is always allowed. None: allowed.
        """
        if submission and auth_user is None:
            return texts.AUTH_REQUIRED
        if (
            auth_user is not None
            and sender
            and self.sender_login_match
            and not self.may_send_as(auth_user, sender)
        ):
            return reply(553, "5.7.1", f"<{sender}>: Sender address not owned by user {auth_user}")
        return None

    def check_etrn(self, client: Client, node: str) -> Reply | None:
        """ETRN (RFC 1985) starts deliveries: only for clients that may relay."""
        if not self.may_relay(client):
            return reply(459, "4.7.1", f"<{node}>: ETRN not allowed from this client")
        return None

    # -- RCPT ------------------------------------------------------------------------

    def check_rcpt(self, address: Address, client: Client) -> list[str] | Reply:
        """The final delivery addresses of an RCPT (aliases expanded), or the refusal."""
        if address.is_bare_postmaster:
            return self._expand(self.canonical(address))
        domain = address.domain.lower()
        local = self.is_local_domain(domain)
        hosted_by_lmtp = not local and domain in self.lmtp_domains
        if not (local or hosted_by_lmtp):
            if self.may_relay(client):
                return [str(address)]
            return reply(554, "5.7.1", f"<{address}>: Relay access denied")
        mailbox = address.mailbox
        if _ROUTING_CHARACTERS & set(mailbox):
            return reply(554, "5.7.1", f"<{address}>: Relay access denied")
        if not self._safe_mailbox_name(mailbox):
            return reply(553, "5.1.3", f"<{address}>: Mailbox name not allowed")
        if not self.mailbox_exists(mailbox.lower(), domain):
            return reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")
        if hosted_by_lmtp:
            # A final destination whose mailboxes the LMTP server keeps (Postfix's
            # virtual_mailbox_domains): accepted from anyone, and no local aliases apply.
            return [str(address)]
        return self._expand(str(address))

    def notice_recipients(self, address: str) -> list[str]:
        """Where a delivery notice (DSN) to ``address`` goes.

        A remote address as it is. A local one that is no mailbox here (``root@`` in a
        domain with users, a name no Maildir may have) would get a Maildir nobody
        reads: the notice goes to ``postmaster@<hostname>`` instead, as Postfix sends
        what it cannot deliver to the postmaster. Local addresses are alias-expanded
        (``postmaster: root, ops@example.org`` reaches both), as RCPT would do.
        """
        mailbox, _, domain = address.rpartition("@")
        if not self.is_local_domain(domain):
            return [address]
        if not (
            self._safe_mailbox_name(mailbox)
            and not _ROUTING_CHARACTERS & set(mailbox)
            and self.mailbox_exists(mailbox.lower(), domain.lower())
        ):
            address = f"postmaster@{self.hostname}"
        finals = self._expand(address)
        return finals if isinstance(finals, list) else [address]

    def _expand(self, address: str) -> list[str] | Reply:
        self._reload_aliases()
        try:
            finals = self.aliases.expand(address, self.is_local)
        except AliasError as exc:
            log.error("alias expansion of %s failed: %s", address, exc)
            finals = []
        if not finals:
            return reply(550, "5.4.6", f"<{address}>: Alias expansion loops or is too deep")
        return finals

    def _reload_aliases(self) -> None:
        """Pick up edits; a broken edit is logged and the previous table stays in force."""
        try:
            self.aliases.reload_if_changed()
        except AliasError as exc:
            log.error("aliases file not reloaded: %s", exc)

    @staticmethod
    def _safe_mailbox_name(mailbox: str) -> bool:
        return (
            bool(mailbox)
            and not mailbox.startswith(".")
            and all(c.isprintable() and c not in "/\\" for c in mailbox)
        )

    def mailbox_exists(self, mailbox: str, domain: str) -> bool:
        """Is ``mailbox@domain`` deliverable here?

        A domain's recipients are its users, its aliases and postmaster (RFC 5321
        §4.5.1). A local domain that has no user at all is in development mode: every
        local part is a mailbox, which is what lets the classic sessions work on a fresh
        install (documented in README). An LMTP domain without users leaves the
        decision to its LMTP server, which refuses unknown users itself.
        """
        self._reload_aliases()
        if not self.users.has_users(domain):
            return True
        return (
            mailbox == "postmaster"
            or self.users.get(f"{mailbox}@{domain}") is not None
            or self.aliases.lookup(mailbox, domain) is not None
        )

    # -- users -----------------------------------------------------------------------

    def login_address(self, name: str) -> str:
        """The address a SASL authentication identity names; a bare name means @hostname."""
        return name if "@" in name else f"{name}@{self.hostname}"

    def login_user(self, name: str) -> User | None:
        return self.users.get(self.login_address(name))

    def may_send_as(self, user: str, sender: str) -> bool:
        """RFC 6409 §6.1: a user may use their own address and the aliases that reach it."""
        if sender.lower() == user.lower():
            return True
        if not self.is_local(sender):
            return False
        finals = self._expand(sender)
        return isinstance(finals, list) and user.lower() in (a.lower() for a in finals)

    # -- VRFY / EXPN -------------------------------------------------------------------

    def _exposed(self, setting: str, client: Client) -> bool:
        return setting == "on" or (setting == "authenticated" and client.authenticated)

    def vrfy(self, argument: str, client: Client) -> Reply:
        if not self._exposed(self.vrfy_exposure, client):
            return reply(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery")
        address = self._local_address(argument)
        if address is None:
            return reply(252, "2.5.2", "Cannot VRFY non-local address; will attempt delivery")
        local, domain = address
        self._reload_aliases()
        if self.mailbox_exists(local, domain) or self.aliases.lookup(local, domain):
            return reply(250, "2.1.5", f"<{local}@{domain}>")
        return reply(550, "5.1.1", f"<{local}@{domain}>... User unknown")

    def expn(self, argument: str, client: Client) -> Reply:
        if not self._exposed(self.expn_exposure, client):
            return reply(502, "5.7.0", "EXPN not allowed")
        address = self._local_address(argument)
        if address is None:
            return reply(550, "5.1.2", f"<{argument}>: not a local list")
        local, domain = address
        self._reload_aliases()
        if self.aliases.lookup(local, domain) is None:
            if self.mailbox_exists(local, domain):
                return reply(250, "2.1.5", f"<{local}@{domain}>")
            return reply(550, "5.1.1", f"<{local}@{domain}>... User unknown")
        members = self._expand(f"{local}@{domain}")
        if isinstance(members, Reply):
            return members
        return Reply(250, tuple(f"<{m}>" for m in members), "2.1.5")

    def _local_address(self, argument: str) -> tuple[str, str] | None:
        """``user`` or ``<user@local.domain>`` → (user, domain); None if not ours."""
        text = argument.strip().strip("<>")
        local, at, domain = text.rpartition("@")
        if not at:
            local, domain = text, self.hostname
        if not local or not self.is_local_domain(domain):
            return None
        return local.lower(), domain.lower()


def mail_auth(given: str | None, auth_user: str | None) -> str | None:
    """RFC 4954 §5: the ``MAIL AUTH=`` to record, trusted only from an authenticated client.

    An unauthenticated client's AUTH= becomes ``<>``; an authenticated one without
    AUTH= is taken to submit as itself.
    """
    if auth_user is None:
        return None if given is None else "<>"
    return given if given is not None else auth_user
