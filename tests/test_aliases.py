"""Aliases: the file's parsing, errors with line numbers, expansion, loops, reloads; the
checks `petrel alias add` makes; the shared database's table read back (PgAliases)."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from conftest import PetrelServer
from petrel.policy.aliases import MAX_DEPTH, AliasError, Aliases, check_entry
from petrel.policy.pg_aliases import PgAliases
from petrel.queue.pg import migrate

LOCAL = {"example.test", "other.test"}


def is_local(domain: str) -> bool:
    return domain.lower() in LOCAL


def load(tmp_path: Path, text: str) -> Aliases:
    path = tmp_path / "aliases"
    path.write_text(text)
    return Aliases.load(path)


def test_parsing_comments_blank_lines_and_continuations(tmp_path: Path) -> None:
    aliases = load(
        tmp_path,
        "# the staff\n"
        "\n"
        "Postmaster: root\n"
        "team: alice, bob@remote.test,\n"
        "   carol\n"
        "  # a comment inside an entry does not end it\n"
        "\tdave@Other.Test\n"
        "   \n"
        "root:alice\r\n",
    )
    assert aliases.lookup("postmaster", "example.test") == ["root@example.test"]
    assert aliases.lookup("TEAM", "example.test") == [
        "alice@example.test",
        "bob@remote.test",
        "carol@example.test",
        "dave@Other.Test",
    ]
    assert aliases.lookup("root", "other.test") == ["alice@other.test"]
    assert aliases.lookup("nobody", "example.test") is None


def test_missing_file_means_no_aliases(tmp_path: Path) -> None:
    aliases = Aliases.load(tmp_path / "absent")
    assert aliases.lookup("root", "example.test") is None
    assert aliases.expand("root@example.test", is_local) == ["root@example.test"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("root: alice\nno colon here\n", 2, "expected"),
        ("root: alice\n: alice\n", 2, "expected"),
        ("root: alice\nbad name: alice\n", 2, "expected"),
        ("  alice\n", 1, "continuation"),
        ("# c\n\nbackup: |/usr/bin/backup\n", 3, "not supported"),
        ("a: b,\n  /var/mail/a\n", 2, "not supported"),
        ("a: :include:/etc/list\n", 1, "not supported"),
        ('a: "|cmd"\n', 1, "not a user name"),
        ("a: <b@x.test>\n", 1, "not a user name"),
        ("a: b@\n", 1, "not a user name"),
        ("a: b@c@d\n", 1, "not a user name"),
        ("a: \\a\n", 1, "not a user name"),
        ("root: alice\nRoot: bob\n", 2, "duplicate alias 'root' (first at line 1)"),
        ("x: a\nempty:\n", 2, "no targets"),
        ("x: a\nempty: ,\n  ,\n", 2, "no targets"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    with pytest.raises(AliasError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'aliases'}:{line}: ")
    assert words in message


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_bytes(b"a: b\nc: \xff\n")
    with pytest.raises(AliasError, match=r"aliases:2: not valid UTF-8"):
        Aliases.load(path)


def test_utf8_names_are_fine(tmp_path: Path) -> None:
    aliases = load(tmp_path, "jösé: ñandú@example.test\n")
    assert aliases.expand("JÖSÉ@example.test", is_local) == ["ñandú@example.test"]


def test_domain_specific_keys_win_and_stay_in_their_domain(tmp_path: Path) -> None:
    aliases = load(tmp_path, "info: alice\ninfo@Other.Test: bob, carol@remote.test\n")
    assert aliases.lookup("info", "example.test") == ["alice@example.test"]
    assert aliases.lookup("INFO", "other.test") == ["bob@other.test", "carol@remote.test"]
    assert aliases.expand("info@other.test", is_local) == ["bob@other.test", "carol@remote.test"]


def test_recursive_expansion_keeps_order_and_drops_duplicates(tmp_path: Path) -> None:
    aliases = load(
        tmp_path,
        "all: staff, board\n"
        "staff: alice, bob\n"
        "board: bob, carol@remote.test, dan\n"
        "dan: dan@far.test\n",
    )
    assert aliases.expand("all@example.test", is_local) == [
        "alice@example.test",
        "bob@example.test",
        "carol@remote.test",
        "dan@far.test",
    ]


def test_bare_targets_take_the_domain_being_expanded(tmp_path: Path) -> None:
    aliases = load(tmp_path, "sales: alice\n")
    assert aliases.expand("sales@other.test", is_local) == ["alice@other.test"]


def test_addresses_in_other_domains_are_not_expanded(tmp_path: Path) -> None:
    aliases = load(tmp_path, "alice: bob\nlist: alice@remote.test\n")
    assert aliases.expand("alice@remote.test", is_local) == ["alice@remote.test"]
    assert aliases.expand("list@example.test", is_local) == ["alice@remote.test"]


def test_loops_end(tmp_path: Path) -> None:
    aliases = load(tmp_path, "a: b\nb: c, x\nc: a, y@remote.test\nping: pong\npong: ping\n")
    assert aliases.expand("a@example.test", is_local) == ["y@remote.test", "x@example.test"]
    assert aliases.expand("ping@example.test", is_local) == []


def test_an_alias_naming_itself_also_gets_its_own_mailbox(tmp_path: Path) -> None:
    aliases = load(tmp_path, "bob: bob, bob@other.test, Bob\nbob@other.test: robert\n")
    assert aliases.expand("bob@example.test", is_local) == [
        "bob@example.test",
        "robert@other.test",
    ]


def test_depth_limit(tmp_path: Path) -> None:
    chain = "".join(f"n{i}: n{i + 1}\n" for i in range(MAX_DEPTH + 5))
    aliases = load(tmp_path, chain)
    assert aliases.expand("n5@example.test", is_local) == [f"n{MAX_DEPTH + 5}@example.test"]
    with pytest.raises(AliasError, match="deeper than"):
        aliases.expand("n0@example.test", is_local)


def test_expand_needs_a_full_address(tmp_path: Path) -> None:
    aliases = load(tmp_path, "a: b\n")
    with pytest.raises(ValueError):
        aliases.expand("postmaster", is_local)


def _touch(path: Path, text: str, mtime: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime, mtime))


def test_reload_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    aliases = Aliases.load(path)
    assert aliases.reload_if_changed() is False

    _touch(path, "a: b\n", 1_000_000_000)
    assert aliases.reload_if_changed() is True
    assert aliases.lookup("a", "example.test") == ["b@example.test"]
    assert aliases.reload_if_changed() is False

    _touch(path, "a: c\n", 2_000_000_000)  # same size, new time
    assert aliases.reload_if_changed() is True
    assert aliases.lookup("a", "example.test") == ["c@example.test"]

    replacement = tmp_path / "aliases.new"  # editors often replace by rename
    _touch(replacement, "a: d\n", 2_000_000_000)
    os.replace(replacement, path)
    assert aliases.reload_if_changed() is True
    assert aliases.lookup("a", "example.test") == ["d@example.test"]

    _touch(path, "a: d\nbroken line\n", 3_000_000_000)
    with pytest.raises(AliasError, match="aliases:2:"):
        aliases.reload_if_changed()
    assert aliases.reload_if_changed() is False  # reported once
    assert aliases.lookup("a", "example.test") == ["d@example.test"]  # old table kept

    _touch(path, "a: e\n", 4_000_000_000)
    assert aliases.reload_if_changed() is True
    assert aliases.lookup("a", "example.test") == ["e@example.test"]

    path.unlink()
    assert aliases.reload_if_changed() is True
    assert aliases.lookup("a", "example.test") is None


def test_check_entry_takes_what_the_file_takes() -> None:
    assert check_entry("Team", ["alice", "bob@remote.test, carol", " "]) == (
        "team",
        ["alice", "bob@remote.test", "carol"],
    )
    assert check_entry("info@Other.Test", ["dave"]) == ("info@other.test", ["dave"])


@pytest.mark.parametrize(
    ("name", "targets", "words"),
    [
        ("backup", ["|/usr/bin/backup"], "program, file and :include: targets are not supported"),
        ("a", ["b", "/var/mail/a"], "not supported"),
        ("a", [":include:/etc/list"], "not supported"),
        ("a", ["<b@x.test>"], "not a user name"),
        ("a", ["b@c@d"], "not a user name"),
        ("bad name", ["alice"], "not a local part or local@domain"),
        ("@example.test", ["alice"], "not a local part or local@domain"),
        ("a:b", ["alice"], "not a local part or local@domain"),
        ("empty", [" , ", ""], "has no targets"),
    ],
)
def test_check_entry_refuses_in_one_line(name: str, targets: list[str], words: str) -> None:
    with pytest.raises(AliasError) as info:
        check_entry(name, targets)
    message = str(info.value)
    assert words in message and "\n" not in message
    assert message.startswith("alias ")


def test_file_backend_alias_commands_say_edit_the_file(tmp_path: Path) -> None:
    server = PetrelServer(tmp_path)
    server.write_config()
    (server.data_dir).mkdir(parents=True, exist_ok=True)
    (server.data_dir / "aliases").write_text("team: alice,\n  bob@remote.test\nroot: alice\n")
    for args in (("add", "x", "alice"), ("del", "team"), ("import", str(tmp_path / "f"))):
        result = server.petrel_cli("alias", *args)
        assert result.returncode == 1, result
        assert result.stderr.strip().splitlines() == [
            f"petrel: aliases are kept in {server.data_dir / 'aliases'} ([users] backend ="
            ' "file"): edit that file; the server re-reads it when it changes'
        ]
    listed = server.petrel_cli("alias", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "root: alice\nteam: alice, bob@remote.test\n"


def test_the_shared_table_skips_rows_typed_in_by_hand_that_the_file_would_refuse(
    pg_dsn: str,
) -> None:
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO petrel_alias (name, targets) VALUES ('evil', '|/bin/sh -c x'),"
            " ('sloppy', 'x@a@b'), ('team', 'alice, bob@remote.test'),"
            " ('team@other.test', 'carol')"
        )
    table = PgAliases(pg_dsn)
    assert table.lookup("evil", "example.test") is None
    assert table.lookup("sloppy", "example.test") is None
    assert table.expand("team@example.test", is_local) == [
        "alice@example.test",
        "bob@remote.test",
    ]
    assert table.expand("TEAM@other.test", is_local) == ["carol@other.test"]


def test_a_database_without_the_alias_table_says_migrate(pg_dsn: str) -> None:
    migrate(pg_dsn, target=2)
    with pytest.raises(OSError, match=r"no petrel_alias table .*run 'petrel db migrate'"):
        PgAliases(pg_dsn)
