"""The SMTP/LMTP client transport against a scripted peer on 127.0.0.1 (no DNS)."""

from __future__ import annotations

import asyncio
import email
import ipaddress
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from petrel.config import load_config
from petrel.delivery.smtp import DEFERRED, DELIVERED, FAILED, Job, Resolver, Route, SmtpTransport
from petrel.dns import Resolver as DnsResolver
from petrel.queue.envelope import Envelope, Recipient
from petrel.smtp import EndOfData, Extensions, Mail, Rcpt, reply
from smtp_peer import PeerScript, ScriptedPeer

BODY = b"Subject: hi\r\n\r\nhello\r\n.leading dot\r\n"


def _config(tmp_path: Path, hosts: str, extra: str = "") -> object:
    path = tmp_path / "petrel.toml"
    path.write_text(
        f"""
[server]
hostname = "client.test"
data_dir = "{tmp_path / "data"}"
[delivery]
connect_timeout = "2s"
command_timeout = "1s"
hosts = {{ {hosts} }}
{extra}
"""
    )
    return load_config(path)


@pytest.fixture
def peer_factory() -> Iterator[object]:
    peers: list[ScriptedPeer] = []

    def make(**kwargs: object) -> ScriptedPeer:
        peer = ScriptedPeer(PeerScript(**kwargs)).start()  # type: ignore[arg-type]
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()


def _job(*rcpts: str, text: bytes = BODY, **env: object) -> Job:
    recipients = [Recipient(a) for a in rcpts]
    envelope = Envelope("0000000000000Q", "sender@client.test", recipients, 0.0, **env)  # type: ignore[arg-type]
    return Job(envelope, recipients, text)


def _transport(config: object) -> SmtpTransport:
    return SmtpTransport(config, DnsResolver(config.dns))  # type: ignore[arg-type, attr-defined]


def _deliver(config: object, jobs: list[Job], domain: str = "remote.test") -> None:
    transport = _transport(config)
    asyncio.run(transport.deliver(Route("mx", domain), jobs))


def test_delivers_with_pipelining_and_dsn_params(tmp_path, peer_factory) -> None:
    peer = peer_factory()
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test", "b@remote.test", envid="env 1", ret="HDRS")
    job.recipients[0].notify = ("SUCCESS", "FAILURE")
    job.recipients[0].orcpt = "rfc822;orig+x@remote.test"
    _deliver(config, [job])
    assert [r.outcome for r in job.results] == [DELIVERED, DELIVERED]
    assert not job.results[0].relayed  # the peer offers DSN
    [msg] = peer.messages
    assert msg.data == BODY  # dot-stuffing undone by the peer's core
    assert msg.params.envid == "env 1" and msg.params.ret == "HDRS"
    assert msg.params.size == len(BODY)
    first = msg.recipients[0][1]
    assert first.notify == ("SUCCESS", "FAILURE") and first.orcpt == "rfc822;orig+x@remote.test"


def test_rcpt_4xx_defers_5xx_fails_per_recipient(tmp_path, peer_factory) -> None:
    def rcpt(event: Rcpt) -> object:
        text = str(event.recipient)
        if text.startswith("soft"):
            return reply(450, "4.2.0", "try later")
        if text.startswith("hard"):
            return reply(550, "5.1.1", "no such user")
        return reply(250, "2.1.5", "ok")

    peer = peer_factory(policy={Rcpt: rcpt})
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("ok@remote.test", "soft@remote.test", "hard@remote.test")
    _deliver(config, [job])
    outcomes = [(r.outcome, r.status) for r in job.results]
    assert outcomes == [(DELIVERED, "2.0.0"), (DEFERRED, "4.2.0"), (FAILED, "5.1.1")]
    assert "550 5.1.1 no such user" in job.results[2].diagnostic
    assert job.results[2].remote_mta == "dns; 127.0.0.1"
    assert [r for r, _ in peer.messages[0].recipients] == ["ok@remote.test"]


def test_no_pipelining_and_no_dsn_marks_relayed(tmp_path, peer_factory) -> None:
    peer = peer_factory(extensions=Extensions(pipelining=False, dsn=False))
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test")
    job.recipients[0].notify = ("SUCCESS",)
    _deliver(config, [job])
    assert job.results[0].outcome == DELIVERED and job.results[0].relayed
    assert peer.messages[0].recipients[0][1].notify is None


def test_end_of_data_5xx_fails_and_4xx_defers(tmp_path, peer_factory) -> None:
    peer = peer_factory(policy={EndOfData: lambda e: reply(554, "5.7.1", "spam")})
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test", "b@remote.test")
    _deliver(config, [job])
    assert [(r.outcome, r.status) for r in job.results] == [(FAILED, "5.7.1")] * 2


def test_mail_4xx_defers_everything(tmp_path, peer_factory) -> None:
    peer = peer_factory(policy={Mail: lambda e: reply(451, "4.3.0", "busy")})
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].outcome == DEFERRED and job.results[0].status == "4.3.0"


def test_dropped_connection_tries_next_mx(tmp_path, peer_factory) -> None:
    dropper = peer_factory(drop_on=Rcpt)
    good = peer_factory()
    config = _config(
        tmp_path, f'"remote.test" = ["127.0.0.1:{dropper.port}", "127.0.0.1:{good.port}"]'
    )
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].outcome == DELIVERED
    assert dropper.connections == 1 and len(good.messages) == 1


def test_stall_times_out_and_defers(tmp_path, peer_factory) -> None:
    peer = peer_factory(stall_on=Mail)
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].outcome == DEFERRED
    assert "timed out" in job.results[0].text


def test_connection_refused_defers(tmp_path) -> None:
    config = _config(tmp_path, '"remote.test" = ["127.0.0.1:1"]')
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].outcome == DEFERRED and job.results[0].status == "4.4.2"
    # As Postfix writes it, the deferral names the port that refused.
    assert job.results[0].text.startswith("connect to 127.0.0.1:1: ")


def test_null_mx_fails_with_5_1_10(tmp_path) -> None:
    config = _config(tmp_path, '"remote.test" = ["."]')
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].outcome == FAILED and job.results[0].status == "5.1.10"


def test_smtputf8_to_a_peer_without_it_fails_5_6_7(tmp_path, peer_factory) -> None:
    peer = peer_factory(extensions=Extensions(smtputf8=False))
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test", smtputf8=True)
    _deliver(config, [job])
    assert job.results[0].outcome == FAILED and job.results[0].status == "5.6.7"
    assert peer.messages == []


def test_8bitmime_only_when_offered(tmp_path, peer_factory) -> None:
    with8 = peer_factory()
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{with8.port}"]')
    job = _job("a@remote.test", body="8BITMIME")
    _deliver(config, [job])
    assert with8.messages[0].params.body == "8BITMIME"
    without = peer_factory(extensions=Extensions(eightbitmime=False))
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{without.port}"]')
    job = _job("a@remote.test", body="8BITMIME")
    _deliver(config, [job])
    assert job.results[0].outcome == DELIVERED
    assert without.messages[0].params.body is None


def test_undeclared_8bit_text_is_passed_on_as_8bitmime(tmp_path, peer_factory) -> None:
    """A client that sent 8-bit bytes without BODY=8BITMIME: the bytes decide, as in Postfix."""
    peer = peer_factory()
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    eight, seven = _job("a@remote.test", text=EIGHT_BIT_BODY), _job("b@remote.test")
    _deliver(config, [eight, seven])
    assert [m.params.body for m in peer.messages] == ["8BITMIME", None]
    assert peer.messages[0].data == EIGHT_BIT_BODY


EIGHT_BIT_BODY = "Subject: 8-bit\r\n\r\nGrüße aus Köln\r\n".encode()


def test_8bit_text_is_converted_once_for_peers_without_8bitmime(
    tmp_path, peer_factory, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="petrel.smtp")
    dropper = peer_factory(extensions=Extensions(eightbitmime=False), drop_on=Rcpt)
    good = peer_factory(extensions=Extensions(eightbitmime=False))
    config = _config(
        tmp_path, f'"remote.test" = ["127.0.0.1:{dropper.port}", "127.0.0.1:{good.port}"]'
    )
    # The client said nothing of 8 bits (BODY=7BIT); the bytes decide.
    job = _job("a@remote.test", text=EIGHT_BIT_BODY)
    _deliver(config, [job])
    assert job.results[0].outcome == DELIVERED
    [msg] = good.messages
    assert msg.data.isascii() and msg.data == job.seven_bit
    assert msg.params.body is None and msg.params.size == len(msg.data)
    message = email.message_from_bytes(msg.data)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_payload(decode=True) == "Grüße aus Köln\r\n".encode()
    # Two peers without 8BITMIME, one conversion.
    [record] = [r for r in caplog.records if r.msg == "converted-7bit"]
    assert record.petrel_fields["queue_id"] == job.envelope.queue_id


def test_8bit_text_that_cannot_be_converted_fails_5_6_5(tmp_path, peer_factory) -> None:
    peer = peer_factory(extensions=Extensions(eightbitmime=False))
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    depth = 1000  # deeper than the stdlib parser can recurse
    nested = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    body = b"MIME-Version: 1.0\r\n" + nested + b"\r\ncaf\xc3\xa9\r\n"
    job = _job("a@remote.test", text=body)
    _deliver(config, [job])
    assert job.results[0].outcome == FAILED and job.results[0].status == "5.6.5"
    assert "8BITMIME" in job.results[0].text and peer.messages == []


def test_size_limit_of_peer_fails_before_sending(tmp_path, peer_factory) -> None:
    peer = peer_factory(extensions=Extensions(size=10))
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].status == "5.3.4" and peer.messages == []


def test_several_messages_share_one_connection(tmp_path, peer_factory) -> None:
    peer = peer_factory()
    config = _config(
        tmp_path,
        f'"remote.test" = ["127.0.0.1:{peer.port}"]',
        "destination_concurrency = 1",
    )
    jobs = [_job(f"u{i}@remote.test") for i in range(5)]
    _deliver(config, jobs)
    assert all(j.results[0].outcome == DELIVERED for j in jobs)
    assert peer.connections == 1 and len(peer.messages) == 5


@pytest.mark.parametrize("pipelining", [True, False])
def test_refused_data_is_reset_before_the_next_message(
    tmp_path, peer_factory, pipelining: bool
) -> None:
    """A refused DATA leaves the transaction open at the peer: RSET, then the next MAIL."""
    from petrel.smtp import Data

    refusals = iter([reply(451, "4.3.0", "not now")])
    peer = peer_factory(
        extensions=Extensions(pipelining=pipelining),
        policy={Data: lambda e: next(refusals, reply(354, None, "go ahead"))},
    )
    config = _config(
        tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]', "destination_concurrency = 1"
    )
    first, second = _job("a@remote.test"), _job("b@remote.test")
    _deliver(config, [first, second])
    assert (first.results[0].outcome, first.results[0].status) == (DEFERRED, "4.3.0")
    assert "in reply to DATA command" in first.results[0].text
    assert second.results[0].outcome == DELIVERED
    assert peer.connections == 1 and len(peer.messages) == 1


def test_greeting_554_goes_to_next_host_then_defers(tmp_path, peer_factory) -> None:
    peer = peer_factory(greeting=reply(554, None, "go away"))
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].outcome == DEFERRED


def test_static_hosts_and_address_literals(tmp_path, dns_server) -> None:
    """The static table replaces MX lookups in test rigs; its names are resolved by
    petrel.dns (A then AAAA, in the table's order); IPs and localhost need no lookup."""
    dns_server.zone("a.test", ["mx2 A 127.0.0.10", "mx2 AAAA ::1"])
    config = _config(
        tmp_path,
        '"a.test" = ["127.0.0.9", "mx2.a.test:2526", "localhost"]',
        f'mx_port = 2525\n[dns]\nnameservers = ["{dns_server.address}"]',
    )
    resolver = Resolver(config.delivery, DnsResolver(config.dns))  # type: ignore[attr-defined]
    hops = asyncio.run(resolver.hops("A.test"))
    assert [(h.host, h.port, h.address) for h in hops] == [
        ("127.0.0.9", 2525, "127.0.0.9"),
        ("mx2.a.test", 2526, "127.0.0.10"),
        ("mx2.a.test", 2526, "::1"),
        ("localhost", 2525, "127.0.0.1"),
        ("localhost", 2525, "::1"),
    ]
    literal = asyncio.run(resolver.hops("[127.0.0.1]"))
    assert [(h.host, h.port, h.address) for h in literal] == [("127.0.0.1", 2525, "127.0.0.1")]


def test_lmtp_route_gets_one_reply_per_recipient(tmp_path, peer_factory) -> None:
    def verdicts(rcpts: list[str]) -> list[object]:
        return [
            reply(452, "4.2.2", "mailbox full")
            if a.startswith("full")
            else reply(250, "2.0.0", "ok")
            for a in rcpts
        ]

    peer = peer_factory(lmtp=True, lmtp_end=verdicts)
    config = _config(tmp_path, "", f'[domains.lmtp]\n"box.test" = "127.0.0.1:{peer.port}"\n')
    transport = _transport(config)
    route = transport.route_for("a@box.test")
    assert route == Route("lmtp", f"127.0.0.1:{peer.port}")
    job = _job("a@box.test", "full@box.test", "c@box.test")
    asyncio.run(transport.deliver(route, [job]))
    assert [(r.outcome, r.status) for r in job.results] == [
        (DELIVERED, "2.0.0"),
        (DEFERRED, "4.2.2"),
        (DELIVERED, "2.0.0"),
    ]
    assert job.results[1].diagnostic.startswith("lmtp; 452")
    assert not job.results[0].relayed


def test_lmtp_over_a_unix_socket(tmp_path) -> None:
    from petrel.smtp import ServerConnection
    from smtp_driver import answer

    path = tmp_path / "lmtp.sock"
    got: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection("sock.test", lmtp=True)
        from petrel.smtp import NEED_DATA, DataChunk
        from petrel.smtp import replies as texts

        writer.write(conn.send(texts.greeting("sock.test", "now")))
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    break
                conn.receive_data(data)
                continue
            if isinstance(event, DataChunk):
                got.append(event.data)
                continue
            if not event.needs_reply:
                break
            writer.write(conn.send(answer(conn, event)))
        writer.close()

    async def main() -> list[object]:
        server = await asyncio.start_unix_server(session, str(path))
        config = _config(tmp_path, "", f'[domains.lmtp]\n"box.test" = "{path}"\n')
        transport = _transport(config)
        job = _job("a@box.test", "b@box.test")
        await transport.deliver(transport.route_for("a@box.test"), [job])
        server.close()
        return job.results

    results = asyncio.run(main())
    assert [r.outcome for r in results] == [DELIVERED, DELIVERED]
    assert b"".join(got) == BODY


def _smarthost_config(tmp_path: Path, port: int, tls: str) -> object:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    return _config(
        tmp_path,
        "",
        f'[relay]\nsmarthost = "127.0.0.1:{port}"\nusername = "petrel"\n'
        f'password_file = "{secret}"\ntls = "{tls}"\n',
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smarthost_authenticates(tmp_path, peer_factory, mechanism: str) -> None:
    from petrel.smtp import AuthChallenge, AuthCredentials

    seen: list[tuple[str, str, str]] = []

    def on_credentials(event: AuthCredentials) -> object:
        seen.append((event.authzid, event.authcid, event.password))
        return reply(235, "2.0.0", "OK Authenticated")

    peer = peer_factory(
        extensions=Extensions(auth=(mechanism,)),
        policy={AuthChallenge: lambda e: e.reply, AuthCredentials: on_credentials},
    )
    config = _smarthost_config(tmp_path, peer.port, "opportunistic")
    transport = _transport(config)
    route = transport.route_for("a@anywhere.test")
    assert route.kind == "smarthost"
    job = _job("a@anywhere.test")
    asyncio.run(transport.deliver(route, [job]))
    assert job.results[0].outcome == DELIVERED
    assert seen == [("", "petrel", "s3cret")]  # the SASL exchange ran in the peer's core


def _scram_smarthost_config(tmp_path: Path, port: int) -> object:
    secret = tmp_path / "secret"
    secret.write_text(PEER_PASSWORD + "\n")
    return _config(
        tmp_path,
        "",
        f'[relay]\nsmarthost = "127.0.0.1:{port}"\nusername = "willie"\n'
        f'password_file = "{secret}"\ntls = "opportunistic"\n',
    )


PEER_PASSWORD = "funsmtp"  # the password smtp_driver's fixed SCRAM keys were made from


@pytest.mark.parametrize("offered", [("SCRAM-SHA-256",), ("LOGIN", "PLAIN", "SCRAM-SHA-256")])
def test_smarthost_offering_scram_gets_the_mail_with_scram(
    tmp_path, peer_factory, offered: tuple[str, ...]
) -> None:
    """The peer's core checks the SCRAM proof; PLAIN/LOGIN would reach AuthCredentials."""
    from petrel.smtp import AuthCredentials, AuthOutcome

    seen: list[object] = []

    def refuse_plain(event: AuthCredentials) -> object:
        seen.append(event)
        return reply(535, "5.7.8", "not this way")

    def outcome(event: AuthOutcome) -> object:
        seen.append(event)
        return reply(235, "2.0.0", "OK") if event.success else reply(535, "5.7.8", "bad")

    peer = peer_factory(
        extensions=Extensions(auth=offered),
        policy={AuthCredentials: refuse_plain, AuthOutcome: outcome},
    )
    config = _scram_smarthost_config(tmp_path, peer.port)
    job = _job("a@anywhere.test")
    transport = _transport(config)
    asyncio.run(transport.deliver(transport.route_for("a@anywhere.test"), [job]))
    assert job.results[0].outcome == DELIVERED, job.results[0].text
    [auth] = seen
    assert isinstance(auth, AuthOutcome) and auth.mechanism == "SCRAM-SHA-256" and auth.success
    assert auth.authcid == "willie"
    assert len(peer.messages) == 1


def test_smarthost_scram_with_a_wrong_password_defers(tmp_path, peer_factory) -> None:
    peer = peer_factory(extensions=Extensions(auth=("SCRAM-SHA-256",)))
    config = _scram_smarthost_config(tmp_path, peer.port)
    (tmp_path / "secret").write_text("not-the-password\n")
    job = _job("a@anywhere.test")
    transport = _transport(config)
    asyncio.run(transport.deliver(transport.route_for("a@anywhere.test"), [job]))
    assert job.results[0].outcome == DEFERRED and "SASL" in job.results[0].text
    assert peer.messages == []


def test_smarthost_auth_failure_defers(tmp_path, peer_factory) -> None:
    from petrel.smtp import AuthChallenge, AuthCredentials

    peer = peer_factory(
        extensions=Extensions(auth=("PLAIN",)),
        policy={
            AuthChallenge: lambda e: e.reply,
            AuthCredentials: lambda e: reply(535, "5.7.8", "bad credentials"),
        },
    )
    config = _smarthost_config(tmp_path, peer.port, "opportunistic")
    job = _job("a@anywhere.test")
    transport = _transport(config)
    asyncio.run(transport.deliver(transport.route_for("a@x.test"), [job]))
    assert job.results[0].outcome == DEFERRED and "SASL" in job.results[0].text
    assert peer.messages == []


def test_smarthost_requiring_tls_defers_without_starttls(tmp_path, peer_factory) -> None:
    peer = peer_factory()
    config = _smarthost_config(tmp_path, peer.port, "required")
    job = _job("a@anywhere.test")
    transport = _transport(config)
    asyncio.run(transport.deliver(transport.route_for("a@x.test"), [job]))
    assert job.results[0].outcome == DEFERRED and job.results[0].status == "4.7.4"
    assert peer.messages == []


@pytest.fixture
def server_tls(tmp_path) -> object:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=peer.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_opportunistic_starttls_to_mx_without_verification(
    tmp_path, peer_factory, server_tls
) -> None:
    peer = peer_factory(extensions=Extensions(starttls=True), tls=server_tls)
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test")
    _deliver(config, [job])
    assert job.results[0].outcome == DELIVERED
    assert peer.tls_sessions == 1 and len(peer.messages) == 1


def test_required_tls_to_smarthost_verifies_the_certificate(
    tmp_path, peer_factory, server_tls
) -> None:
    peer = peer_factory(extensions=Extensions(starttls=True), tls=server_tls)
    config = _smarthost_config(tmp_path, peer.port, "required")
    job = _job("a@anywhere.test")
    transport = _transport(config)
    asyncio.run(transport.deliver(transport.route_for("a@x.test"), [job]))
    assert job.results[0].outcome == DEFERRED  # self-signed: refused, mail kept
    assert peer.messages == []


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (
            ["@ MX 20 mx2", "@ MX 10 mx1", "mx1 A 127.0.0.11", "mx2 A 127.0.0.12", "mx2 AAAA ::1"],
            [("mx1.d.test", "127.0.0.11"), ("mx2.d.test", "127.0.0.12"), ("mx2.d.test", "::1")],
        ),
        (["@ A 127.0.0.13"], [("d.test", "127.0.0.13")]),  # no MX: the domain itself
        (["@ MX 0 ."], "5.1.10"),  # null MX
        (["@ MX 10 nowhere"], "5.4.4"),  # the MX host has no address
    ],
)
def test_mx_lookup_against_a_real_dns_server(
    tmp_path, dns_server, records: list[str], expected: object
) -> None:
    """RFC 5321 §5.1 and RFC 7505 through petrel.dns, against Knot serving d.test."""
    from petrel.delivery.smtp import RouteError

    dns_server.zone("d.test", records)
    config = _config(tmp_path, "", f'[dns]\nnameservers = ["{dns_server.address}"]')
    resolver = Resolver(config.delivery, DnsResolver(config.dns))  # type: ignore[attr-defined]
    try:
        hops = asyncio.run(resolver.hops("d.test"))
    except RouteError as exc:
        assert exc.result.status == expected
    else:
        assert [(h.host, h.address) for h in hops] == expected
        assert all(h.port == 25 for h in hops)


def test_mx_lookup_of_a_missing_domain_fails_and_a_timeout_defers(
    tmp_path, dns_server, silent_nameserver
) -> None:
    from petrel.delivery.smtp import RouteError

    dns_server.zone("d.test", ["@ MX 10 mx"])
    for nameserver, domain, status in [
        (dns_server.address, "gone.d.test", "5.1.2"),  # NXDOMAIN: bounce now
        (silent_nameserver, "d.test", "4.4.3"),  # no answer in time: try again later
    ]:
        config = _config(
            tmp_path, "", f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = "0.5s"'
        )
        resolver = Resolver(config.delivery, DnsResolver(config.dns))  # type: ignore[attr-defined]
        with pytest.raises(RouteError) as caught:
            asyncio.run(resolver.hops(domain))
        assert caught.value.result.status == status, caught.value.result.text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("mx_port = 0", "delivery.mx_port"),
        ('hosts = { "a.test" = "127.0.0.1" }', "delivery.hosts.a.test"),
        ('hosts = { "a.test" = ["[::1"] }', "delivery.hosts.a.test[0]"),
        ("destination_concurrency = 0", "delivery.destination_concurrency"),
        ("bogus = 1", "delivery.bogus"),
    ],
)
def test_delivery_config_errors_name_the_key(tmp_path, text: str, error: str) -> None:
    from petrel.config import ConfigError

    path = tmp_path / "p.toml"
    path.write_text(f"[delivery]\n{text}\n")
    with pytest.raises(ConfigError, match=r"^" + error.replace("[", r"\[").replace(".", r"\.")):
        load_config(path)


def test_deliverby_is_passed_on_with_the_time_left(tmp_path, peer_factory) -> None:
    """RFC 2852 §4.2: a peer offering DELIVERBY gets BY= minus the time already spent."""
    import time

    peer = peer_factory(extensions=Extensions(deliverby=30))
    config = _config(tmp_path, f'"remote.test" = ["127.0.0.1:{peer.port}"]')
    job = _job("a@remote.test", by=(3600, "RT"))
    job.envelope.received_at = time.time() - 600  # ten minutes in the queue already
    _deliver(config, [job])
    assert job.results[0].outcome == DELIVERED
    [msg] = peer.messages
    seconds, mode = msg.params.by
    assert mode == "RT" and 2990 <= seconds <= 3000


# -- names the configuration gives: resolved by petrel.dns, never by getaddrinfo -----------

_NAMES_LOOKED_UP: list[str] = []  # host names given to getaddrinfo while recording
_RECORDING = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _RECORDING and event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        try:
            ipaddress.ip_address(host)
        except ValueError:
            _NAMES_LOOKED_UP.append(host)


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside a test


@pytest.fixture
def system_resolver_calls() -> Iterator[list[str]]:
    """The names the process asked the system resolver for during the test."""
    global _RECORDING
    _NAMES_LOOKED_UP.clear()
    _RECORDING = True
    yield _NAMES_LOOKED_UP
    _RECORDING = False


@pytest.fixture
def names_zone(dns_server) -> object:
    """names.test: a smarthost and an LMTP server by name (only here: getaddrinfo cannot
    know them), a name with no address, a v6-only name."""
    dns_server.zone(
        "names.test",
        ["relay A 127.0.0.1", "lmtp A 127.0.0.1", 'noaddr TXT "x"', "v6 AAAA ::1"],
    )
    return dns_server


def test_smarthost_by_name_gets_the_mail_without_the_system_resolver(
    tmp_path, peer_factory, names_zone, system_resolver_calls
) -> None:
    peer = peer_factory()
    config = _config(
        tmp_path,
        "",
        f'[dns]\nnameservers = ["{names_zone.address}"]\n'
        f'[relay]\nsmarthost = "relay.names.test:{peer.port}"\ntls = "opportunistic"\n',
    )
    transport = _transport(config)
    job = _job("a@anywhere.test")
    asyncio.run(transport.deliver(transport.route_for("a@anywhere.test"), [job]))
    assert job.results[0].outcome == DELIVERED, job.results[0].text
    assert f"relay.names.test[127.0.0.1]:{peer.port}" in job.results[0].text
    assert [m.recipients[0][0] for m in peer.messages] == ["a@anywhere.test"]
    assert system_resolver_calls == []


def test_lmtp_target_by_name_gets_the_mail(
    tmp_path, peer_factory, names_zone, system_resolver_calls
) -> None:
    peer = peer_factory(lmtp=True)
    config = _config(
        tmp_path,
        "",
        f'[dns]\nnameservers = ["{names_zone.address}"]\n'
        f'[domains.lmtp]\n"box.test" = "lmtp.names.test:{peer.port}"\n',
    )
    transport = _transport(config)
    job = _job("a@box.test", "b@box.test")
    asyncio.run(transport.deliver(transport.route_for("a@box.test"), [job]))
    assert [r.outcome for r in job.results] == [DELIVERED, DELIVERED]
    assert [r for r, _ in peer.messages[0].recipients] == ["a@box.test", "b@box.test"]
    assert system_resolver_calls == []


def test_localhost_smarthost_works_with_dns_off(tmp_path, peer_factory) -> None:
    """``smarthost = "localhost:25"`` is loopback (127.0.0.1, then ::1), asked of no one."""
    peer = peer_factory()
    config = _config(
        tmp_path,
        "",
        f'dns = false\n[relay]\nsmarthost = "localhost:{peer.port}"\ntls = "opportunistic"\n',
    )
    transport = _transport(config)
    job = _job("a@anywhere.test")
    asyncio.run(transport.deliver(transport.route_for("a@anywhere.test"), [job]))
    assert job.results[0].outcome == DELIVERED, job.results[0].text
    assert len(peer.messages) == 1


@pytest.mark.parametrize(
    ("section", "key", "why"),
    [
        ('[relay]\nsmarthost = "typo.names.test:25"', "relay.smarthost", "(NXDOMAIN)"),
        ('[relay]\nsmarthost = "noaddr.names.test:25"', "relay.smarthost", "no A or AAAA"),
        (
            '[domains.lmtp]\n"anywhere.test" = "typo.names.test:24"',
            "domains.lmtp.anywhere.test",
            "(NXDOMAIN)",
        ),
        (
            '[delivery.hosts]\n"anywhere.test" = ["typo.names.test", "noaddr.names.test"]',
            "delivery.hosts.anywhere.test",
            "noaddr.names.test: no A or AAAA record",
        ),
    ],
)
def test_a_configured_name_without_address_defers_naming_the_key(
    tmp_path, names_zone, section: str, key: str, why: str
) -> None:
    """A typo in the configuration must not bounce mail: 4.4.3, saying which key."""
    path = tmp_path / "petrel.toml"
    path.write_text(
        f'[server]\nhostname = "client.test"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[dns]\nnameservers = ["{names_zone.address}"]\n{section}\n'
    )
    transport = _transport(load_config(path))
    job = _job("a@anywhere.test")
    asyncio.run(transport.deliver(transport.route_for("a@anywhere.test"), [job]))
    [result] = job.results
    assert (result.outcome, result.status) == (DEFERRED, "4.4.3")
    assert result.text.startswith(f"No address for {key}: "), result.text
    assert why in result.text


def test_a_dns_timeout_or_dns_off_defers_the_smarthost(tmp_path, silent_nameserver) -> None:
    for extra, why in [
        (f'[dns]\nnameservers = ["{silent_nameserver}"]\ntimeout = "0.5s"', "timed out"),
        ("dns = false", "DNS is off (delivery.dns = false)"),
    ]:
        config = _config(tmp_path, "", f'{extra}\n[relay]\nsmarthost = "relay.names.test:25"\n')
        transport = _transport(config)
        job = _job("a@anywhere.test")
        asyncio.run(transport.deliver(transport.route_for("a@anywhere.test"), [job]))
        [result] = job.results
        assert (result.outcome, result.status) == (DEFERRED, "4.4.3"), result.text
        assert "relay.smarthost: relay.names.test: " in result.text and why in result.text
