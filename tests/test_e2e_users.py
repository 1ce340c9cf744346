"""The user store: ``petrel user`` and a running server that follows it without restart."""

from __future__ import annotations

from conftest import HOSTNAME, PetrelServer, RawClient


def _rcpt(petrel: PetrelServer, address: str) -> str:
    client = RawClient(petrel.connect())
    try:
        client.reply()
        client.command("EHLO users.test")
        client.command("MAIL FROM:<s@client.test>")
        return client.command(f"RCPT TO:<{address}>")[0]
    finally:
        client.close()


def test_user_cli_add_list_passwd_del(petrel: PetrelServer) -> None:
    petrel.add_user(f"Ann@{HOSTNAME}", "first secret")
    petrel.add_user(f"bob@{HOSTNAME}", "second")
    listed = petrel.petrel_cli("user", "list")
    assert listed.stdout.split() == [f"ann@{HOSTNAME}", f"bob@{HOSTNAME}"]
    again = petrel.petrel_cli("user", "add", f"ann@{HOSTNAME}", "--password-stdin", stdin="x\n")
    assert again.returncode == 1 and "user exists" in again.stderr
    store = (petrel.data_dir / "users").read_text()
    assert "first secret" not in store and "$argon2id$" in store
    assert (petrel.data_dir / "users").stat().st_mode & 0o077 == 0
    changed = petrel.petrel_cli(
        "user", "passwd", f"ann@{HOSTNAME}", "--password-stdin", stdin="third\n"
    )
    assert changed.returncode == 0
    assert (petrel.data_dir / "users").read_text() != store
    assert petrel.petrel_cli("user", "del", f"bob@{HOSTNAME}").returncode == 0
    assert petrel.petrel_cli("user", "list").stdout.split() == [f"ann@{HOSTNAME}"]
    missing = petrel.petrel_cli("user", "del", f"bob@{HOSTNAME}")
    assert missing.returncode == 1 and "no such user" in missing.stderr
    empty = petrel.petrel_cli("user", "add", f"eve@{HOSTNAME}", "--password-stdin", stdin="\n")
    assert empty.returncode == 1


def test_recipients_follow_the_user_store_without_restart(petrel_factory) -> None:
    petrel: PetrelServer = petrel_factory()
    (petrel.data_dir / "aliases").write_text("sales: ann\n")
    # Development mode: no user yet, any local part is a mailbox.
    assert _rcpt(petrel, f"anybody@{HOSTNAME}").startswith("250 2.1.5")
    petrel.add_user(f"ann@{HOSTNAME}", "pw")
    assert _rcpt(petrel, f"anybody@{HOSTNAME}") == (
        f"550 5.1.1 <anybody@{HOSTNAME}>: Recipient address rejected: User unknown"
    )
    assert _rcpt(petrel, f"ANN@{HOSTNAME}").startswith("250 2.1.5")
    assert _rcpt(petrel, f"sales@{HOSTNAME}").startswith("250 2.1.5")
    assert _rcpt(petrel, f"postmaster@{HOSTNAME}").startswith("250 2.1.5")
    # A local domain without users stays in development mode.
    assert _rcpt(petrel, "anybody@localhost").startswith("250 2.1.5")
    petrel.petrel_cli("user", "del", f"ann@{HOSTNAME}")
    assert _rcpt(petrel, f"anybody@{HOSTNAME}").startswith("250 2.1.5")
