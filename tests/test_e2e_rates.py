"""Issue 16 item 3: per-client and per-user rates (Postfix's anvil) on a real ``petrel serve``.

Clients come from 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to lo), taken out of
``limits.exempt_networks`` (``LIMITS``); 127.0.0.1 stays exempt and must be unaffected.
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Callable

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until

RCPT = f"postmaster@{HOSTNAME}"
LIMITS = '[limits]\nexempt_networks = ["127.0.0.1/32", "::1/128"]\n'


def _client(server: PetrelServer, source: str) -> RawClient:
    sock = socket.create_connection(
        (server.host, server.port), timeout=10, source_address=(source, 0)
    )
    return RawClient(sock)


def _session(server: PetrelServer, source: str) -> RawClient:
    client = _client(server, source)
    assert client.reply()[0].startswith("220 ")
    assert client.command("EHLO client.test")[0].startswith("250")
    return client


def _message(client: RawClient) -> str:
    """One transaction; the reply to MAIL when it is refused, else the final reply."""
    mail = client.command("MAIL FROM:<a@client.test>")[0]
    if not mail.startswith("250"):
        return mail
    assert client.command(f"RCPT TO:<{RCPT}>")[0].startswith("250")
    assert client.command("DATA")[0].startswith("354")
    return client.command("Subject: hi\r\n\r\nok\r\n.")[0]


def _sends(server: PetrelServer, source: str, count: int) -> list[str]:
    client = _session(server, source)
    try:
        return [_message(client) for _ in range(count)]
    finally:
        client.close()


def test_the_eleventh_message_is_refused_and_other_clients_are_unaffected(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(LIMITS + "message_rate = 10\n")
    replies = [r for _ in range(5) for r in _sends(server, "127.0.0.2", 2)]
    assert all(r.startswith("250 ") for r in replies), replies
    assert _sends(server, "127.0.0.2", 1) == ["450 4.7.1 Error: too much mail from 127.0.0.2"]
    assert _sends(server, "127.0.0.3", 1)[0].startswith("250 ")  # another client
    assert all(r.startswith("250 ") for r in _sends(server, "127.0.0.1", 12))  # exempt
    log = server.log_text()
    assert "event=rate-limit" in log and "limit=message" in log and "client=127.0.0.2" in log


def test_workers_share_the_counts(petrel_factory: Callable[..., PetrelServer]) -> None:
    """Ten messages through both workers, then the eleventh is refused by each."""
    server = petrel_factory(LIMITS + "message_rate = 10\n", server_config="workers = 2")
    wait_until(lambda: server.log_text().count("event=worker-ready") >= 2, what="workers")
    by_worker: dict[str, list[RawClient]] = {}
    held: list[RawClient] = []
    try:
        # The kernel picks the worker of each connection: open (and hold) sessions until
        # both have some.
        for _ in range(40):
            client = _session(server, "127.0.0.2")
            held.append(client)
            port = client.sock.getsockname()[1]
            found = wait_until(
                lambda port=port: re.search(
                    rf"event=connect .*client=127\.0\.0\.2:{port} .*worker=(\d+)",
                    server.log_text(),
                ),
                what="the connect line",
            )
            assert isinstance(found, re.Match)
            by_worker.setdefault(found[1], []).append(client)
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, "one worker took every connection"
        one, two = (clients[0] for clients in by_worker.values())
        replies = [_message(c) for _ in range(5) for c in (one, two)]
        assert all(r.startswith("250 ") for r in replies), replies
        refusal = "450 4.7.1 Error: too much mail from 127.0.0.2"
        assert [_message(one), _message(two)] == [refusal, refusal]
        assert _sends(server, "127.0.0.3", 1)[0].startswith("250 ")
    finally:
        for client in held:
            client.close()


def test_connection_rate_refuses_at_connect(petrel_factory: Callable[..., PetrelServer]) -> None:
    server = petrel_factory(LIMITS + "connection_rate = 3\n")
    for _ in range(3):
        client = _client(server, "127.0.0.2")
        assert client.reply()[0].startswith("220 ")
        client.close()
    refused = _client(server, "127.0.0.2")
    assert refused.reply() == [f"421 4.7.0 {HOSTNAME} Error: too many connections from 127.0.0.2"]
    assert refused.at_eof()
    refused.close()
    for source in ("127.0.0.3", "127.0.0.1"):
        other = _client(server, source)
        assert other.reply()[0].startswith("220 ")
        other.close()


def test_recipient_rate_refuses_at_rcpt(petrel_factory: Callable[..., PetrelServer]) -> None:
    server = petrel_factory(LIMITS + "recipient_rate = 3\n")
    client = _session(server, "127.0.0.2")
    assert client.command("MAIL FROM:<a@client.test>")[0].startswith("250")
    for _ in range(3):
        assert client.command(f"RCPT TO:<{RCPT}>")[0].startswith("250")
    assert client.command(f"RCPT TO:<{RCPT}>") == [
        "450 4.7.1 Error: too many recipients from 127.0.0.2"
    ]
    # The transaction goes on with the recipients it has.
    assert client.command("DATA")[0].startswith("354")
    assert client.command("Subject: hi\r\n\r\nok\r\n.")[0].startswith("250 ")
    client.close()
    other = _session(server, "127.0.0.3")  # another client, and the exempt one
    assert other.command("MAIL FROM:<a@client.test>")[0].startswith("250")
    assert other.command(f"RCPT TO:<{RCPT}>")[0].startswith("250")
    other.close()
    exempt = _session(server, "127.0.0.1")
    assert exempt.command("MAIL FROM:<a@client.test>")[0].startswith("250")
    assert all(exempt.command(f"RCPT TO:<{RCPT}>")[0].startswith("250") for _ in range(5))
    exempt.close()


def test_user_message_rate_refuses_an_authenticated_user_even_from_loopback(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(
        "[auth]\nallow_plaintext_auth = true\n[limits]\nuser_message_rate = 2\n"
    )
    user = f"willie@{HOSTNAME}"
    server.add_user(user, "funsmtp")
    client = _session(server, "127.0.0.1")  # exempt from the per-client rates, not this one
    token = base64.b64encode(f"\0{user}\0funsmtp".encode()).decode()
    assert client.command(f"AUTH PLAIN {token}")[0].startswith("235")
    for _ in range(2):
        assert client.command(f"MAIL FROM:<{user}>")[0].startswith("250")
        assert client.command("RSET")[0].startswith("250")
    assert client.command(f"MAIL FROM:<{user}>") == [
        f"450 4.7.1 Error: too much mail from {user}, try again later"
    ]
    client.close()
    line = next(x for x in server.log_text().splitlines() if "event=rate-limit" in x)
    assert "limit=user-message" in line and f"user={user}" in line
    # Unauthenticated mail from the same address is not the user's.
    assert _sends(server, "127.0.0.1", 1)[0].startswith("250 ")
