"""The session's policy decisions, in process: MAIL, RCPT, ETRN, MAIL AUTH= and AUTH.

What the subprocess tests see at the wire, asked of `Policy` and `Authenticator`
directly: no server, no sockets; the AUTH throttle runs on an injected clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import Clock
from petrel import smtp
from petrel.config import Config, load_config
from petrel.policy import Client, Policy, mail_auth
from petrel.policy.aliases import Aliases
from petrel.policy.auth import Authenticator, Granted, LockedOut, Refused, may_act_as
from petrel.policy.decoy import ScramDecoys, decoy_password_hash
from petrel.policy.throttle import AuthThrottle, ThrottleTable
from petrel.policy.users import User, Users, verify_password

RELAY_IP = "192.0.2.10"
STRANGER = Client("198.51.100.7")
RELAY_CLIENT = Client(RELAY_IP)
AUTHENTICATED = Client("198.51.100.7", authenticated=True)


def _config(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "petrel.toml"
    path.write_text(
        f'[server]\nhostname = "mx.test"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[domains]\nlocal = ["mx.test", "example.test"]\nrelay_networks = ["{RELAY_IP}/32"]\n'
        + extra
    )
    return load_config(path)


def _policy(config: Config, aliases: str = "") -> Policy:
    path = config.server.data_dir / "aliases"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(aliases)
    return Policy(config, Aliases.load(path), Users(config.server.data_dir / "users"))


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return _policy(_config(tmp_path), "sales: alice@example.test\n")


# -- MAIL ------------------------------------------------------------------------------


def test_submission_needs_auth_before_mail(policy: Policy) -> None:
    refusal = policy.check_mail(STRANGER, "alice@example.test", None, submission=True)
    assert refusal is not None and str(refusal) == "530 5.7.0 Authentication required"
    # <> too: RFC 6409 §4.3 asks for AUTH before any transaction on the submission port.
    assert policy.check_mail(STRANGER, "", None, submission=True) == refusal


def test_mail_on_the_smtp_port_needs_no_auth(policy: Policy) -> None:
    assert policy.check_mail(STRANGER, "someone@elsewhere.test", None, submission=False) is None


def test_an_authenticated_user_may_send_only_as_itself_or_its_aliases(policy: Policy) -> None:
    user = "alice@example.test"
    for sender in (user, "ALICE@example.test", "sales@example.test", ""):
        assert policy.check_mail(AUTHENTICATED, sender, user, submission=True) is None, sender
    refusal = policy.check_mail(AUTHENTICATED, "bob@example.test", user, submission=True)
    assert refusal is not None
    assert str(refusal) == (
        "553 5.7.1 <bob@example.test>: Sender address not owned by user alice@example.test"
    )
    # Also on the smtp port: AUTH binds the sender wherever it happened.
    assert policy.check_mail(AUTHENTICATED, "x@elsewhere.test", user, submission=False) is not None


def test_sender_login_match_off_lets_a_user_send_as_anyone(tmp_path: Path) -> None:
    policy = _policy(_config(tmp_path, "[auth]\nsender_login_match = false\n"))
    user = "alice@example.test"
    assert policy.check_mail(AUTHENTICATED, "bob@example.test", user, submission=True) is None


# -- RCPT, ETRN ------------------------------------------------------------------------


def test_rcpt_refuses_relaying_for_strangers_only(policy: Policy) -> None:
    far = smtp.parse_path("<c@far.test>")
    assert far is not None
    refusal = policy.check_rcpt(far, STRANGER)
    assert isinstance(refusal, smtp.Reply)
    assert str(refusal) == "554 5.7.1 <c@far.test>: Relay access denied"
    assert policy.check_rcpt(far, RELAY_CLIENT) == ["c@far.test"]
    assert policy.check_rcpt(far, AUTHENTICATED) == ["c@far.test"]
    sales = smtp.parse_path("<sales@example.test>")
    assert sales is not None
    assert policy.check_rcpt(sales, STRANGER) == ["alice@example.test"]


def test_etrn_only_from_clients_that_may_relay(policy: Policy) -> None:
    refusal = policy.check_etrn(STRANGER, "far.test")
    assert refusal is not None
    assert str(refusal) == "459 4.7.1 <far.test>: ETRN not allowed from this client"
    assert policy.check_etrn(RELAY_CLIENT, "far.test") is None
    assert policy.check_etrn(AUTHENTICATED, "@far.test") is None


# -- MAIL AUTH= (RFC 4954 §5) ----------------------------------------------------------


def test_mail_auth_is_trusted_only_from_an_authenticated_client() -> None:
    assert mail_auth("boss@example.test", None) == "<>"
    assert mail_auth("<>", None) == "<>"
    assert mail_auth(None, None) is None
    assert mail_auth("alice@example.test", "alice@example.test") == "alice@example.test"
    assert mail_auth(None, "alice@example.test") == "alice@example.test"  # submits as itself


# -- AUTH: the Authenticator -----------------------------------------------------------


class Verifier:
    """verify_password, recording the hashes it was asked to check."""

    def __init__(self) -> None:
        self.hashes: list[str] = []

    def __call__(self, stored: str, password: str) -> bool:
        self.hashes.append(stored)
        return verify_password(stored, password)


@pytest.fixture
def users(tmp_path: Path) -> Users:
    store = Users(tmp_path / "data" / "users")
    store.add("alice@example.test", "right-password")
    return store


def _authenticator(
    tmp_path: Path, users: Users, max_failures: int = 3
) -> tuple[Authenticator, Verifier, Clock]:
    config = _config(tmp_path)
    policy = Policy(config, Aliases.load(tmp_path / "no-aliases"), users)
    clock = Clock()
    throttle = AuthThrottle(ThrottleTable.in_memory(slots=64), max_failures, 600.0, 900.0, clock)
    verifier = Verifier()
    return Authenticator(policy, throttle, ScramDecoys(b"k" * 32), verifier), verifier, clock


IP = "203.0.113.5"


def test_the_right_password_is_granted(tmp_path: Path, users: Users) -> None:
    auth, _, _ = _authenticator(tmp_path, users)
    verdict = asyncio.run(auth.check_password(IP, "alice@example.test", "", "right-password"))
    assert verdict == Granted("alice@example.test")


def test_an_unknown_user_costs_the_same_as_a_known_one(tmp_path: Path, users: Users) -> None:
    auth, verifier, _ = _authenticator(tmp_path, users)
    asyncio.run(auth.check_password(IP, "alice@example.test", "", "wrong"))
    verdict = asyncio.run(auth.check_password(IP, "nobody@example.test", "", "wrong"))
    assert isinstance(verdict, Refused) and verdict.delay is not None
    real, decoy = verifier.hashes
    assert decoy == decoy_password_hash()
    # Same algorithm, version and cost parameters: "$argon2id$v=19$m=…,t=…,p=…$salt$hash".
    assert decoy.split("$")[:4] == real.split("$")[:4]


def test_scram_decoys_are_stable_per_name(tmp_path: Path, users: Users) -> None:
    auth, _, _ = _authenticator(tmp_path, users)
    one = auth.scram_start(IP, "nobody")
    two = auth.scram_start(IP, "nobody")
    assert one is not None and two is not None
    assert one[1] == two[1]
    other = auth.scram_start(IP, "someone-else")
    assert other is not None and other[1].salt != one[1].salt


def test_failures_delay_then_lock_out_before_any_verification(
    tmp_path: Path, users: Users
) -> None:
    auth, verifier, clock = _authenticator(tmp_path, users, max_failures=3)
    delays = []
    for _ in range(2):
        verdict = asyncio.run(auth.check_password(IP, "alice@example.test", "", "wrong"))
        assert isinstance(verdict, Refused) and verdict.delay is not None
        delays.append(verdict.delay)
    assert delays[1] > delays[0]  # the delay grows with the failures
    third = asyncio.run(auth.check_password(IP, "alice@example.test", "", "wrong"))
    assert third == Refused(None)  # this failure locked the IP out
    assert auth.locked(IP)
    verified = len(verifier.hashes)
    # Locked out: even the right password is not verified at all.
    right = asyncio.run(auth.check_password(IP, "alice@example.test", "", "right-password"))
    assert right == LockedOut()
    assert auth.scram_start(IP, "alice@example.test") is None
    assert len(verifier.hashes) == verified
    clock.now += 901  # the lock-out is over
    right = asyncio.run(auth.check_password(IP, "alice@example.test", "", "right-password"))
    assert right == Granted("alice@example.test")


def test_a_lock_during_verification_hides_the_right_password(
    tmp_path: Path, users: Users
) -> None:
    auth, _, _ = _authenticator(tmp_path, users, max_failures=2)
    started = auth.scram_start(IP, "alice@example.test")
    assert started is not None
    attempt, _ = started
    # Meanwhile, guesses from the same IP use up the budget and lock it out.
    asyncio.run(auth.check_password(IP, "alice@example.test", "", "wrong"))
    assert auth.locked(IP)
    assert not auth.may_confirm(attempt, IP)  # no server signature for a locked IP
    assert auth.scram_outcome(attempt, "alice@example.test", "", True) == LockedOut()


def test_acting_for_someone_else_is_refused(tmp_path: Path, users: Users) -> None:
    auth, _, _ = _authenticator(tmp_path, users)
    verdict = asyncio.run(
        auth.check_password(IP, "alice@example.test", "bob@example.test", "right-password")
    )
    assert isinstance(verdict, Refused)
    alice = User("alice@example.test", "", None)
    assert may_act_as(alice, "alice@example.test", "")
    assert may_act_as(alice, "Alice@Example.test", "ALICE@example.test")
    assert not may_act_as(alice, "alice@example.test", "bob@example.test")


def test_a_cancelled_exchange_counts_as_a_failure(tmp_path: Path, users: Users) -> None:
    auth, _, _ = _authenticator(tmp_path, users, max_failures=2)
    first = auth.given_up(IP, None)
    assert first.delay is not None
    assert auth.given_up(IP, None) == Refused(None)
    assert auth.locked(IP)
