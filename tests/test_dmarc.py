"""DMARC record parsing and alignment (RFC 7489 §3.1, §6.3, §6.6.3) with the bundled PSL."""

from __future__ import annotations

from petrel.mailauth.dmarc import DmarcRecord, aligned, organizational_domain, parse_record


def test_organisational_domain_follows_the_public_suffix_list() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.com") == "example.com"
    assert organizational_domain("Mail.Example.Test.") == "example.test"  # "*" rule


def test_alignment_strict_and_relaxed() -> None:
    assert aligned("example.com", "EXAMPLE.com", strict=True)
    assert not aligned("mail.example.com", "example.com", strict=True)
    assert aligned("mail.example.com", "example.com", strict=False)
    assert not aligned("example.co.uk", "other.co.uk", strict=False)


def test_records() -> None:
    assert parse_record("v=DMARC1; p=reject; sp=none; pct=20; adkim=s") == DmarcRecord(
        "reject", "none", 20, adkim_strict=True
    )
    assert parse_record("v=DMARC1;p=quarantine") == DmarcRecord("quarantine")
    assert parse_record("v=spf1 -all") is None
    assert parse_record("p=reject; v=DMARC1") is None  # v= must come first
    assert parse_record("v=DMARC1; p=bogus") is None  # no valid p, no rua: no record
    # A bad p with a report address acts as p=none (§6.6.3); a bad pct as 100.
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:d@example.com") == DmarcRecord("none")
    assert parse_record("v=DMARC1; p=reject; pct=500") == DmarcRecord("reject")
