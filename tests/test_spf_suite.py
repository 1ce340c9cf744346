"""The RFC 7208 test suite (openspf.org, 2014.04) against Petrel's SPF evaluator.

Each scenario's zone data is served through `Lookups` as the suite's own driver
(pyspf's testspf.py) serves it: ``TIMEOUT`` entries time out, names under ``error.``
time out, SPF-type records stand in for TXT when a name has no TXT, one CNAME level is
followed, empty labels are dropped and a label over 63 octets fails the lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from petrel.mailauth.dns import Answer, DnsTempError
from petrel.mailauth.spf import check_host

SUITE = Path(__file__).parent / "spf" / "rfc7208-tests.yml"


class ZoneLookups:
    """One scenario's ``zonedata`` as the `Lookups` interface."""

    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        self.zone: dict[str, list[Any]] = {}
        for name, entries in zonedata.items():
            records: list[Any] = []
            has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
            for entry in entries:
                if entry == "TIMEOUT":
                    records.append("TIMEOUT")
                    continue
                ((kind, value),) = entry.items()
                if kind == "SPF":
                    if has_txt:
                        continue
                    kind = "TXT"
                if kind == "TXT" and value == "NONE":
                    continue
                records.append((kind, value))
            self.zone[name.lower()] = records

    def _records(self, name: str, kind: str, level: int = 0) -> Answer[Any]:
        labels = [label for label in name.split(".") if label]
        if any(len(label) > 63 for label in labels):
            raise DnsTempError("DNS label too long")
        key = ".".join(labels).lower()
        if key not in self.zone:
            if key.startswith("error."):
                raise DnsTempError("DNS timeout")
            return Answer(nxdomain=True)
        found: list[Any] = []
        for entry in self.zone[key]:
            if entry == "TIMEOUT":
                if not found:
                    raise DnsTempError("DNS timeout")
                break
            entry_kind, value = entry
            if value == "TIMEOUT" and entry_kind == kind:
                raise DnsTempError("DNS timeout")
            if entry_kind == kind:
                found.append(value)
            elif entry_kind == "CNAME" and level == 0:
                found.extend(self._records(value, kind, 1).records)
        return Answer(tuple(found))

    async def txt(self, name: str) -> Answer[str]:
        answer = self._records(name, "TXT")
        texts = tuple("".join([v] if isinstance(v, str) else v) for v in answer.records)
        return Answer(texts, answer.nxdomain)

    async def addresses(self, name: str, ipv6: bool) -> Answer[str]:
        return self._records(name, "AAAA" if ipv6 else "A")

    async def mx(self, name: str) -> Answer[tuple[int, str]]:
        answer = self._records(name, "MX")
        return Answer(tuple((int(p), h.rstrip(".")) for p, h in answer.records), answer.nxdomain)

    async def ptr(self, ip: str) -> Answer[str]:
        answer = self._records(ipaddress.ip_address(ip).reverse_pointer, "PTR")
        return Answer(tuple(n.rstrip(".") for n in answer.records), answer.nxdomain)


def _cases() -> list[Any]:
    cases = []
    for scenario in yaml.safe_load_all(SUITE.read_text(encoding="utf-8")):
        for name, test in scenario["tests"].items():
            cases.append(pytest.param(scenario["zonedata"], test, id=name))
    return cases


@pytest.mark.parametrize(("zonedata", "test"), _cases())
def test_rfc7208_suite(zonedata: dict[str, list[Any]], test: dict[str, Any]) -> None:
    mailfrom, helo = test["mailfrom"], test["helo"]
    if not mailfrom:
        domain, sender = helo, f"postmaster@{helo}"
    elif "@" not in mailfrom:
        domain, sender = mailfrom, f"postmaster@{mailfrom}"
    else:
        local, _, domain = mailfrom.rpartition("@")
        sender = f"{local or 'postmaster'}@{domain}"
    outcome = asyncio.run(
        check_host(
            ZoneLookups(zonedata),
            test["host"],
            domain,
            sender,
            helo,
            test.get("receiver", "unknown"),
        )
    )
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert outcome.result in expected, outcome.problem
    explanation = test.get("explanation")
    if outcome.result == "fail" and explanation not in (None, "DEFAULT"):
        # The hex digits of an IPv6 %{i} come lower-cased; the suite's text has upper.
        assert (outcome.explanation or "").lower() == explanation.lower()
