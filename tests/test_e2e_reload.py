"""``petrel reload`` / SIGHUP re-reads the whole configuration (issue 15, item 4)."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

from conftest import HOSTNAME, PetrelServer, RawClient, wait_until

NEW_DOMAIN = "new.petrel.test"


def _config(server: PetrelServer, local: list[str], recipients: object) -> None:
    domains = ", ".join(f'"{d}"' for d in local)
    value = f'"{recipients}"' if isinstance(recipients, str) else recipients
    server.extra_config = f"[domains]\nlocal = [{domains}]\n[limits]\nrecipients = {value}\n"
    server.write_config()


def _client(server: PetrelServer) -> RawClient:
    client = RawClient(server.connect())
    assert client.reply()[0].startswith("220")
    assert client.command("EHLO client.test")[-1].startswith("250")
    assert client.command("MAIL FROM:<a@client.test>")[0].startswith("250")
    return client


def _rcpts(client: RawClient, domain: str, count: int) -> list[str]:
    return [client.command(f"RCPT TO:<u{i}@{domain}>")[0][:3] for i in range(count)]


def _reload(server: PetrelServer, event: str, cli: bool = True) -> None:
    before = server.log_text().count(f"event={event}")
    if cli:
        assert server.petrel_cli("reload").returncode == 0
    else:
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: server.log_text().count(f"event={event}") > before, what=event)


def _start(petrel_factory: Callable[..., PetrelServer], **kwargs: str) -> PetrelServer:
    extra = f'[domains]\nlocal = ["{HOSTNAME}"]\n[limits]\nrecipients = 3\n'
    return petrel_factory(extra, **kwargs)


def test_reload_applies_to_new_sessions_only(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _start(petrel_factory)
    before = _client(server)
    assert _rcpts(before, NEW_DOMAIN, 1) != ["250"]  # not ours yet
    _config(server, [HOSTNAME, NEW_DOMAIN], 2)
    _reload(server, "reloaded")

    # Opened before the reload: the old recipient limit (3) still holds.
    assert _rcpts(before, HOSTNAME, 4) == ["250", "250", "250", "452"]
    before.close()

    after = _client(server)
    assert _rcpts(after, HOSTNAME, 3) == ["250", "250", "452"]  # the new limit
    after.command("RSET")
    assert after.command("MAIL FROM:<a@client.test>")[0].startswith("250")
    assert after.command(f"RCPT TO:<bob@{NEW_DOMAIN}>")[0].startswith("250")
    assert after.command("DATA")[0].startswith("354")
    after.send(b"Subject: reloaded\r\n\r\nhi\r\n.\r\n")
    assert after.reply()[0].startswith("250")
    after.command("QUIT")
    after.close()
    server.wait_for_messages("bob", 1, domain=NEW_DOMAIN)
    assert "reload-refused" not in server.log_text()
    assert "reload-needs-restart" not in server.log_text()


def test_a_broken_config_is_refused_and_the_running_one_stays(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _start(petrel_factory)
    _config(server, [HOSTNAME, NEW_DOMAIN], "many")
    # `petrel reload` reads the file first, and says what is wrong without a signal ...
    cli = server.petrel_cli("reload")
    assert cli.returncode != 0 and "limits.recipients" in cli.stderr, cli.stderr
    assert "reload-refused" not in server.log_text()
    # ... and a SIGHUP from elsewhere (systemctl reload) is refused by the server.
    _reload(server, "reload-refused", cli=False)
    refused = [line for line in server.log_text().splitlines() if "reload-refused" in line]
    assert len(refused) == 1 and "limits.recipients" in refused[0], refused
    assert "event=reloaded" not in server.log_text()
    assert server.process is not None and server.process.poll() is None
    client = _client(server)
    assert _rcpts(client, HOSTNAME, 4) == ["250", "250", "250", "452"]  # still 3
    client.command("RSET")
    client.command("MAIL FROM:<a@client.test>")
    assert _rcpts(client, NEW_DOMAIN, 1) != ["250"]  # still not ours
    client.close()


def test_a_changed_listener_needs_a_restart(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = _start(petrel_factory)
    _config(server, [HOSTNAME, NEW_DOMAIN], 2)
    text = server.config_path.read_text()
    server.config_path.write_text(text.replace('"127.0.0.1:0"', '"127.0.0.1:2"'))
    _reload(server, "reloaded")
    needs = re.search(r"event=reload-needs-restart keys=(\S+)", server.log_text())
    assert needs is not None and needs[1] == "listeners", server.log_text()
    client = _client(server)  # the old listener still serves, with the new limits
    assert _rcpts(client, NEW_DOMAIN, 3) == ["250", "250", "452"]
    client.close()


def test_workers_apply_the_reload(petrel_factory: Callable[..., PetrelServer]) -> None:
    server = _start(petrel_factory, server_config="workers = 2")
    wait_until(lambda: server.log_text().count("event=worker-ready") >= 2, what="the workers")
    _config(server, [HOSTNAME, NEW_DOMAIN], 2)
    _reload(server, "reloaded")
    wait_until(
        lambda: {"1", "2"} <= set(re.findall(r"event=reloaded .*worker=(\d+)", server.log_text())),
        what="both workers to reload",
    )
    for _ in range(6):  # the kernel spreads them over the workers
        client = _client(server)
        assert _rcpts(client, NEW_DOMAIN, 3) == ["250", "250", "452"]
        client.close()
