"""``petrel sendmail``: local submission into the spool, with the server running or stopped."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until
from petrel.cli.sendmail import parse_args
from petrel.intake.local import read_message


def sendmail(server: PetrelServer, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "petrel", "sendmail", "--config", str(server.config_path), *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def test_t_takes_to_cc_bcc_and_removes_bcc(petrel: PetrelServer) -> None:
    message = (
        b"From: Cron Daemon <cron@example.org>\n"
        b"To: alice@mx.petrel.test\n"
        b"Cc: Bob <bob@mx.petrel.test>,\n carol\n"
        b"Bcc: hidden@mx.petrel.test\n"
        b"Subject: nightly report\n"
        b"\n"
        b"all good\n"
    )
    result = sendmail(petrel, message, "-t", "-i")
    assert result.returncode == 0, result.stderr
    for user in ("alice", "bob", "carol", "hidden"):
        [copy] = petrel.wait_for_messages(user, timeout=5)  # picked up at once, delivered once
        header = copy.split(b"\n\n")[0].split(b"\n")
        assert not [h for h in header if b"hidden" in h and not h.startswith(b"Delivered-To:")]
        assert not [h for h in header if h.lower().startswith(b"bcc:")]
        assert b"\nReceived: from local user " in copy
        assert b"with local id " in copy
        assert b"Message-ID: <" in copy and b"\nDate: " in copy
        assert copy.endswith(b"\n\nall good\n")
    petrel.wait_queue_empty()


def test_a_lone_dot_ends_input_unless_i(petrel: PetrelServer) -> None:
    text = b"Subject: dots\n\nbefore\n.\nafter\n"
    assert sendmail(petrel, text, "dot@mx.petrel.test").returncode == 0
    assert sendmail(petrel, text, "-oi", "dotted@mx.petrel.test").returncode == 0
    [cut] = petrel.wait_for_messages("dot")
    [kept] = petrel.wait_for_messages("dotted")
    assert cut.endswith(b"\n\nbefore\n")
    assert kept.endswith(b"\n\nbefore\n.\nafter\n")


def test_8bit_input_and_missing_final_newline(petrel: PetrelServer) -> None:
    text = "Subject: caf\u00e9\n\nna\u00efve \u00fcber\nlast line".encode("latin-1")
    result = sendmail(petrel, text, "-f", "me@example.org", "-F", "Me Myself", "eight")
    assert result.returncode == 0, result.stderr
    [copy] = petrel.wait_for_messages("eight")
    assert copy.startswith(b"Return-Path: <me@example.org>\n")
    assert copy.endswith("na\u00efve \u00fcber\nlast line\n".encode("latin-1"))
    assert b"\nFrom: Me Myself <me@example.org>\n" in copy


def test_queued_while_stopped_is_delivered_once_at_start(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory()
    assert server.stop() == 0
    result = sendmail(server, b"Subject: offline\r\n\r\nqueued while down\r\n", "off")
    assert result.returncode == 0, result.stderr
    assert len(server.queue_files()) == 1
    assert server.messages("off") == []
    server.start()
    [copy] = server.wait_for_messages("off")
    assert copy.endswith(b"\n\nqueued while down\n")
    server.wait_queue_empty()
    assert server.stop() == 0
    server.start()
    server.wait_queue_empty()
    assert len(server.messages("off")) == 1


def test_no_recipients_is_a_usage_error(petrel: PetrelServer) -> None:
    result = sendmail(petrel, b"Subject: x\n\nbody\n", "-t")
    assert result.returncode == 64
    assert b"no recipients" in result.stderr
    assert petrel.queue_files() == []


def test_bad_recipient_address_is_refused(petrel: PetrelServer) -> None:
    result = sendmail(petrel, b"x\n", "a b c@@example")
    assert result.returncode == 65


@pytest.mark.parametrize(
    ("data", "ignore", "expected"),
    [
        (b"a\n.\nb\n", False, b"a\r\n"),
        (b"a\n.\nb\n", True, b"a\r\n.\r\nb\r\n"),
        (b"a\r\n.\r\n", False, b"a\r\n"),
        (b".\n", False, b""),
        (b"a\n.", False, b"a\r\n"),
        (b"no newline", False, b"no newline\r\n"),
        (b"cr\ronly\n", False, b"cr\r\nonly\r\n"),
        (b"..stuffed\n", False, b"..stuffed\r\n"),
    ],
)
def test_read_message(data: bytes, ignore: bool, expected: bytes) -> None:
    assert read_message(io.BytesIO(data), ignore_dots=ignore) == expected


def test_sendmail_option_syntax() -> None:
    opts, _ = parse_args(["-oi", "-fme@x.org", "-F", "Me", "-odi", "-t", "a", "--", "-b"])
    assert opts.ignore_dots and opts.extract
    assert (opts.sender, opts.full_name) == ("me@x.org", "Me")
    assert opts.recipients == ["a", "-b"]
    assert parse_args(["-C", "/etc/p.toml"])[1] is not None


def test_hostname_qualifies_bare_local_names(petrel: PetrelServer) -> None:
    assert sendmail(petrel, b"Subject: s\n\nb\n", "-f", "cron", "postmaster").returncode == 0
    [copy] = petrel.wait_for_messages("postmaster")
    assert copy.startswith(f"Return-Path: <cron@{HOSTNAME}>\n".encode())


def test_t_with_an_unknown_local_user_delivers_the_rest_and_bounces_it(
    petrel: PetrelServer,
) -> None:
    petrel.add_user(f"alice@{HOSTNAME}", "alice-password")
    petrel.add_user(f"bob@{HOSTNAME}", "bob-password")
    message = (
        f"To: alice@{HOSTNAME}, ghost@{HOSTNAME}\nCc: bob@{HOSTNAME}\nSubject: to three\n\nhello\n"
    ).encode()
    result = sendmail(petrel, message, "-t", "-f", f"bob@{HOSTNAME}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode() == (
        f"sendmail: ghost@{HOSTNAME}: 550 5.1.1 <ghost@{HOSTNAME}>: "
        "Recipient address rejected: User unknown\n"
    )
    [copy] = petrel.wait_for_messages("alice")
    assert copy.endswith(b"\n\nhello\n")
    copies = petrel.wait_for_messages("bob", count=2)
    [notice] = [m for m in copies if b"Undelivered Mail Returned to Sender" in m]
    assert notice.startswith(b"Return-Path: <>\n")
    assert f"Final-Recipient: rfc822; ghost@{HOSTNAME}\nAction: failed\nStatus: 5.1.1".encode() in (
        notice
    )
    assert b"Subject: to three" in notice
    assert not petrel.mailbox("ghost").exists()
    petrel.wait_queue_empty()


def test_every_recipient_unknown_is_refused_and_nothing_queued(petrel: PetrelServer) -> None:
    petrel.add_user(f"alice@{HOSTNAME}", "alice-password")
    result = sendmail(petrel, b"Subject: x\n\nbody\n", "-f", f"alice@{HOSTNAME}", "ghost")
    assert result.returncode == 67
    assert b"User unknown" in result.stderr
    assert petrel.queue_files() == []


def test_bp_lists_the_queue_and_q_flushes_it(petrel: PetrelServer) -> None:
    result = sendmail(petrel, b"Subject: away\n\nwaiting\n", "-f", "app", "bob@elsewhere.test")
    assert result.returncode == 0, result.stderr
    [queue_id] = petrel.queue_files()
    state = petrel.data_dir / "queue" / "state" / queue_id

    def attempts() -> int:
        text = state.read_text() if state.exists() else ""
        match = re.search(r'"attempts": ?(\d+)', text)
        return int(match.group(1)) if match else 0

    wait_until(lambda: attempts() == 1, what="the first deferral")
    listed = sendmail(petrel, b"", "-bp")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode() == petrel.petrel_cli("queue", "list").stdout
    assert f"\n{queue_id} ".encode() in b"\n" + listed.stdout
    assert b"bob@elsewhere.test" in listed.stdout

    flushed = sendmail(petrel, b"", "-q")
    assert (flushed.returncode, flushed.stdout) == (0, b"petrel: 1 message to be tried now\n")
    wait_until(lambda: attempts() == 2, what="the flushed retry")
    other = sendmail(petrel, b"", "-qR", "other.test")
    assert other.stdout == b"petrel: 0 messages to be tried now\n"
    assert sendmail(petrel, b"", "-qRelsewhere.test").stdout.startswith(b"petrel: 1 message ")
    wait_until(lambda: attempts() == 3, what="the retry for the domain")
    assert sendmail(petrel, b"", "-q30m").returncode == 64  # no message: -q<interval> ignored


def test_refusal_notice_to_a_sender_without_mailbox_goes_to_the_postmaster(
    petrel: PetrelServer,
) -> None:
    petrel.add_user(f"alice@{HOSTNAME}", "alice-password")
    result = sendmail(petrel, b"Subject: cron\n\nx\n", "-f", "root", "alice", "ghost")
    assert result.returncode == 0, result.stderr
    petrel.wait_for_messages("alice")
    [notice] = petrel.wait_for_messages("postmaster")  # no alias: the postmaster Maildir
    assert f"\nTo: <root@{HOSTNAME}>\n".encode() in notice
    assert f"Final-Recipient: rfc822; ghost@{HOSTNAME}".encode() in notice
    petrel.wait_queue_empty()
    assert not petrel.mailbox("root").exists()


def test_bs_speaks_smtp_on_stdin_and_stdout(petrel: PetrelServer) -> None:
    petrel.add_user(f"alice@{HOSTNAME}", "alice-password")
    script = (
        "EHLO client.example\r\n"
        "MAIL FROM:<cron@example.org>\r\n"
        f"RCPT TO:<alice@{HOSTNAME}>\r\n"
        f"RCPT TO:<ghost@{HOSTNAME}>\r\n"
        "DATA\r\n"
        "Subject: over -bs\r\n"
        "\r\n"
        "first line\r\n"
        "..dot-stuffed\r\n"
        ".\r\n"
        "QUIT\r\n"
    ).encode()
    result = sendmail(petrel, script, "-bs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split("\r\n")
    assert lines.pop() == ""
    assert re.fullmatch(rf"220 {re.escape(HOSTNAME)} ESMTP Petrel; .+", lines[0])
    assert lines[1] == f"250-{HOSTNAME} Hello client.example"
    keywords = {line[4:].split()[0] for line in lines if line.startswith("250-")}
    assert "SIZE" in keywords and "PIPELINING" in keywords
    assert not keywords & {"STARTTLS", "AUTH"}
    replies = [line for line in lines[1:] if line[3] == " "]
    assert replies[0].startswith("250 ")  # EHLO's last line
    assert replies[1] == "250 2.1.0 <cron@example.org>... Sender ok"
    assert replies[2].startswith(f"250 2.1.5 <alice@{HOSTNAME}>")
    assert replies[3].startswith("550 5.1.1 ") and "User unknown" in replies[3]
    assert replies[4].startswith("354 ")
    accepted = re.fullmatch(r"250 2\.0\.0 (\S+) Message accepted for delivery", replies[5])
    assert accepted, replies[5]
    assert replies[6].startswith("221 ")
    assert len(replies) == 7
    [copy] = petrel.wait_for_messages("alice", timeout=5)  # a running server, poked at once
    assert copy.startswith(b"Return-Path: <cron@example.org>\n")
    assert b"\nReceived: from local user " in copy
    assert f"with local id {accepted.group(1)}".encode() in copy
    assert b"Message-ID: <" in copy and b"\nDate: " in copy
    assert b"\nFrom: cron@example.org\n" in copy
    assert copy.endswith(b"\n\nfirst line\n.dot-stuffed\n")
    assert not petrel.mailbox("ghost").exists()
    petrel.wait_queue_empty()


def test_bs_at_end_of_input_and_with_two_messages(petrel: PetrelServer) -> None:
    # Commands ending in a bare LF (the text needs CRLF: only CRLF.CRLF ends it), the
    # null sender, two messages, HELP/NOOP/VRFY/RSET, an unknown command, no QUIT.
    script = (
        b"HELO script\n"
        b"NOOP\n"
        b"HELP\n"
        b"VRFY someone\n"
        b"BOGUS\n"
        b"MAIL FROM:<>\n"
        b"RCPT TO:<postmaster>\n"
        b"RSET\n"
        b"MAIL FROM:<>\n"
        b"RCPT TO:<postmaster>\n"
        b"DATA\n"
        b"Subject: one\r\n\r\nbody one\r\n.\r\n"
        b"MAIL FROM:<a@example.org>\n"
        b"RCPT TO:<postmaster>\n"
        b"DATA\n"
        b"Subject: two\r\n\r\nbody two\r\n.\r\n"
        b"MAIL FROM:<a@example.org>\n"
        b"RCPT TO:<postmaster>\n"
        b"DATA\n"
        b"Subject: cut off\r\n\r\nnever ends\r\n"
    )
    result = sendmail(petrel, script, "-bs")
    assert result.returncode == 0, result.stderr
    codes = [line[:3] for line in result.stdout.decode().split("\r\n")[:-1] if line[3] == " "]
    assert codes[:4] == ["220", "250", "250", "214"]
    assert codes[4] in ("250", "252", "550")  # VRFY: the policy's answer
    message = ["250", "250", "354", "250"]  # MAIL, RCPT, DATA, the end of the text
    assert codes[5:] == ["500", "250", "250", "250", *message, *message, *message[:3]]
    copies = petrel.wait_for_messages("postmaster", count=2)
    assert sorted(c.split(b"\n\n", 1)[1] for c in copies) == [b"body one\n", b"body two\n"]
    petrel.wait_queue_empty()
    assert len(petrel.messages("postmaster")) == 2  # the unfinished third is dropped


def test_bs_option_parses() -> None:
    assert parse_args(["-bs"])[0].mode == "bs"


def test_bs_bdat_and_a_mail_loop(petrel: PetrelServer) -> None:
    text = b"Subject: chunked\r\n\r\nin two chunks\r\n"
    looped = b"".join(
        b"Received: from x by y; Tue, 1 Dec 2026 00:00:00 +0000\r\n"
        for _ in range(100)  # max_received
    )
    looped += b"\r\nround and round\r\n"
    script = (
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster>\r\n"
        + b"BDAT %d\r\n" % 10
        + text[:10]
        + b"BDAT %d LAST\r\n" % (len(text) - 10)
        + text[10:]
        + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster>\r\nDATA\r\n"
        + looped
        + b".\r\nQUIT\r\n"
    )
    result = sendmail(petrel, script, "-bs")
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.decode().split("\r\n")[:-1] if line[3] == " "]
    bdat = ["250", "250", "250", "250", "250"]  # EHLO, MAIL, RCPT, two chunks
    looping = ["250", "250", "354", "554"]
    assert [r[:3] for r in replies] == ["220", *bdat, *looping, "221"]
    assert replies[4] == "250 2.0.0 10 octets received"
    assert replies[5].endswith(" Message accepted for delivery")
    assert replies[9].startswith("554 5.4.6 ")
    [copy] = petrel.wait_for_messages("postmaster")
    assert copy.endswith(b"\n\nin two chunks\n")
    petrel.wait_queue_empty()
    assert len(petrel.messages("postmaster")) == 1
