"""The HTTP API, /api/v1/events and /metrics against the real ``petrel serve``.

Clients: urllib and http.client from the stdlib, curl for the two README lines, smtplib
for the mail; the metrics are read with prometheus-client's own text parser.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import smtplib
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import HOSTNAME, PetrelServer, wait_until

ADMIN = "admin@console.test"  # not a local domain: bob@ stays in development mode
ADMIN_PASSWORD = "correct horse battery"
HTTP = """
[[listener]]
address = "127.0.0.1:0"
mode = "http"
"""


class Api:
    """A tiny JSON client for one server; ``auth`` is the Authorization header."""

    def __init__(self, server: PetrelServer, auth: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{server.ports['http']}"
        self.auth = auth

    def call(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, method=method)
        if self.auth:
            request.add_header("Authorization", self.auth)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        code, _, body = self.call(method, path, **kw)
        assert code == status, (code, body)
        return json.loads(body)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def web(petrel_factory: Callable[..., PetrelServer]) -> PetrelServer:
    server = petrel_factory(HTTP + '[domains]\nrelay_networks = ["127.0.0.0/8"]\n')
    result = server.petrel_cli(
        "user", "add", ADMIN, "--admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n"
    )
    assert result.returncode == 0, result.stderr
    return server


def admin_api(server: PetrelServer) -> Api:
    return Api(server, basic(ADMIN, ADMIN_PASSWORD))


def rich_message(
    subject: str = "Quarterly report", sender: str = "alice@example.org"
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Alice <{sender}>"
    message["To"] = f"bob@{HOSTNAME}"
    message["Subject"] = subject
    message["Date"] = "Tue, 01 Dec 2026 10:00:00 +0000"
    message.set_content("The plain text part.\n")
    message.add_alternative("<p>The <b>HTML</b> part.</p>\n", subtype="html")
    message.add_attachment(
        b"\x00\x01binary\xff", maintype="application", subtype="pdf", filename="report.pdf"
    )
    return message


def send(server: PetrelServer, message: EmailMessage, to: str | None = None) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.send_message(message, to_addrs=[to] if to else None)


def test_message_fields_parts_raw_and_delete(web: PetrelServer) -> None:
    api = admin_api(web)
    send(web, rich_message())
    (stored,) = web.wait_for_messages("bob")

    assert api.json("GET", "/api/v1/mailboxes") == [
        {"address": f"bob@{HOSTNAME}", "messages": 1, "unseen": 1}
    ]
    (summary,) = api.json("GET", f"/api/v1/mailboxes/bob@{HOSTNAME}/messages")
    assert summary["from"] == "Alice <alice@example.org>"
    assert summary["to"] == [f"bob@{HOSTNAME}"]
    assert summary["subject"] == "Quarterly report"
    assert summary["date"] == "2026-12-01T10:00:00+00:00"
    assert summary["size"] == len(stored)
    assert summary["seen"] is False

    message = api.json("GET", f"/api/v1/messages/{summary['id']}")
    assert message["text"] == "The plain text part.\n"
    assert message["html"] == "<p>The <b>HTML</b> part.</p>\n"
    assert message["attachments"] == [
        {"index": 0, "filename": "report.pdf", "content_type": "application/pdf", "size": 9}
    ]
    assert ["Subject", "Quarterly report"] in message["headers"]
    assert message["seen"] is True  # opened: flagged S as a mail reader does
    assert api.json("GET", "/api/v1/mailboxes")[0]["unseen"] == 0

    code, headers, raw = api.call("GET", f"/api/v1/messages/{summary['id']}/raw")
    assert code == 200 and headers["Content-Type"] == "message/rfc822"
    assert raw == stored
    code, headers, data = api.call("GET", f"/api/v1/messages/{summary['id']}/attachments/0")
    assert (code, data) == (200, b"\x00\x01binary\xff")
    assert headers["Content-Disposition"] == 'attachment; filename="report.pdf"'

    assert api.json("DELETE", f"/api/v1/messages/{summary['id']}") == {"deleted": True}
    maildir = web.mailbox("bob")
    assert list((maildir / "new").iterdir()) == [] and list((maildir / "cur").iterdir()) == []
    gone = api.json("GET", f"/api/v1/messages/{summary['id']}", status=404)
    assert gone == {"error": "not-found", "message": "no such message"}


def test_bad_ids_and_parameters_get_json_errors(web: PetrelServer) -> None:
    api = admin_api(web)
    send(web, rich_message())
    web.wait_for_messages("bob")
    traversal = base64.urlsafe_b64encode(b"../../etc/passwd").decode().rstrip("=")
    for bad in (traversal, "not-an-id", base64.urlsafe_b64encode(b"a/b/c/d").decode()):
        answer = api.json("GET", f"/api/v1/messages/{bad}", status=404)
        assert answer["error"] == "not-found"
    assert api.json("GET", "/api/v1/mailboxes/nobody@nowhere.test/messages", status=404) == {
        "error": "not-found",
        "message": "no mailbox nobody@nowhere.test",
    }
    path = f"/api/v1/mailboxes/bob@{HOSTNAME}/messages"
    assert api.json("GET", path + "?limit=abc", status=400) == {
        "error": "bad-parameter",
        "message": "limit: must be a whole number from 1 to 500",
    }
    assert api.json("GET", path + "?since=yesterday", status=400)["message"].startswith("since:")
    assert api.json("GET", "/api/v1/queue/1K0V8G4A2SAQFN", status=404) == {
        "error": "not-found",
        "message": "1K0V8G4A2SAQFN: no such message",
    }
    assert api.json("POST", "/api/v1/queue/1K0V8G4A2SAQFN/hold", status=404)["error"] == (
        "not-found"
    )


def test_newest_first_paging_and_search(web: PetrelServer) -> None:
    api = admin_api(web)
    for number in range(3):
        send(web, rich_message(f"Message {number}", sender=f"s{number}@example.org"))
        web.wait_for_messages("bob", number + 1)
    path = f"/api/v1/mailboxes/bob@{HOSTNAME}/messages"
    listed = api.json("GET", path)
    assert [m["subject"] for m in listed] == ["Message 2", "Message 1", "Message 0"]
    code, headers, body = api.call("GET", path + "?limit=1&offset=1")
    assert code == 200 and headers["X-Total-Count"] == "3"
    assert [m["subject"] for m in json.loads(body)] == ["Message 1"]
    assert [m["subject"] for m in api.json("GET", path + "?from=s0@")] == ["Message 0"]
    assert [m["subject"] for m in api.json("GET", path + "?subject=message%202")] == ["Message 2"]
    assert api.json("GET", path + "?to=bob@&since=2026-12-02") == []
    assert len(api.json("GET", path + "?since=2026-12-01&before=2026-12-02")) == 3


def test_credentials_admins_and_the_shared_throttle(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(HTTP + "[auth]\nmax_failures = 3\nallow_plaintext_auth = true\n")
    for address, extra in ((ADMIN, ["--admin"]), (f"bob@{HOSTNAME}", [])):
        result = server.petrel_cli(
            "user", "add", address, *extra, "--password-stdin", stdin=ADMIN_PASSWORD + "\n"
        )
        assert result.returncode == 0, result.stderr
    code, headers, body = Api(server).call("GET", "/api/v1/mailboxes")
    assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert json.loads(body)["error"] == "unauthorized"
    assert admin_api(server).json("GET", "/api/v1/mailboxes") == []
    token = server.petrel_cli("user", "token", ADMIN).stdout.strip()
    assert token.startswith("petrel_")
    assert Api(server, f"Bearer {token}").json("GET", "/api/v1/queue") == []
    assert Api(server, "Bearer petrel_wrong").json("GET", "/api/v1/queue", status=401)
    not_admin = Api(server, basic(f"bob@{HOSTNAME}", ADMIN_PASSWORD))
    assert not_admin.json("GET", "/api/v1/mailboxes", status=403)["error"] == "forbidden"

    # The throttle is SMTP AUTH's: two more failures lock the address out of both.
    wrong = Api(server, basic(ADMIN, "guess"))
    assert wrong.json("GET", "/api/v1/mailboxes", status=401)["error"] == "unauthorized"
    assert wrong.json("GET", "/api/v1/mailboxes", status=429)["error"] == "locked-out"
    right = admin_api(server)  # the right password, remembered from before: refused too
    assert right.json("GET", "/api/v1/mailboxes", status=429)["error"] == "locked-out"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        assert sock.recv(1024).startswith(b"421 4.7.0")


def test_actions_need_the_same_origin_and_the_csrf_token(web: PetrelServer) -> None:
    api = admin_api(web)
    code, headers, page = api.call("GET", "/")
    assert code == 200
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    found = re.search(rb'name="csrf-token" content="([0-9a-f]+)"', page)
    assert found is not None
    token = found[1].decode()
    flush = "/api/v1/queue/flush"
    own = api.base
    refused = api.json("POST", flush, 403, headers={"Origin": "http://evil.example"})
    assert refused == {"error": "csrf", "message": "cross-site request refused"}
    cross = {"Origin": own, "Sec-Fetch-Site": "cross-site", "X-CSRF-Token": token}
    assert api.json("POST", flush, 403, headers=cross)["error"] == "csrf"
    assert api.json("POST", flush, 403, headers={"Origin": own})["message"] == (
        "missing or wrong X-CSRF-Token"
    )
    same = {"Origin": own, "Sec-Fetch-Site": "same-origin", "X-CSRF-Token": token}
    assert api.json("POST", flush, headers=same) == {"flushed": 0}
    assert api.json("POST", flush) == {"flushed": 0}  # curl and scripts send no Origin

    send(web, rich_message())
    web.wait_for_messages("bob")
    (summary,) = api.json("GET", f"/api/v1/mailboxes/bob@{HOSTNAME}/messages")
    code, headers, _ = api.call("GET", f"/api/v1/messages/{summary['id']}/html")
    assert code == 200
    assert headers["Content-Security-Policy"] == (
        "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline';"
        " frame-ancestors 'self'; sandbox"
    )


def test_queue_actions_show_in_petrel_queue_list(web: PetrelServer) -> None:
    api = admin_api(web)
    send(web, rich_message(), to="carol@remote.example")
    queued = wait_until(
        lambda: [
            m for m in api.json("GET", "/api/v1/queue") if m["recipients"][0]["state"] == "deferred"
        ],
        what="a deferred message",
    )
    assert isinstance(queued, list)
    (message,) = queued
    queue_id = message["queue_id"]
    (recipient,) = message["recipients"]
    assert recipient["address"] == "carol@remote.example"
    assert recipient["last_error"]  # why it waits, as mailq shows it

    def listing() -> str:
        result = web.petrel_cli("queue", "list")
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert api.json("POST", f"/api/v1/queue/{queue_id}/hold") == {"changed": True}
    assert f"{queue_id}!" in listing()
    assert api.json("POST", f"/api/v1/queue/{queue_id}/flush") == {"changed": False}  # held
    assert api.json("POST", f"/api/v1/queue/{queue_id}/release") == {"changed": True}
    assert f"{queue_id}!" not in listing() and queue_id in listing()
    assert api.json("POST", f"/api/v1/queue/{queue_id}/flush") == {"changed": True}
    wait_until(lambda: not api.json("GET", "/api/v1/queue")[0]["active"], what="attempt over")
    answer = api.json("DELETE", f"/api/v1/queue/{queue_id}")
    assert answer == {"removed": [queue_id], "pending": []}
    assert listing().startswith("Mail queue is empty")
    assert api.json("DELETE", f"/api/v1/queue/{queue_id}", status=404)["error"] == "not-found"


def test_auth_none_is_refused_off_loopback(
    petrel_factory: Callable[..., PetrelServer], tmp_path: Path
) -> None:
    config = tmp_path / "open.toml"
    config.write_text(
        f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "{tmp_path / "d"}"\n'
        '[http]\nauth = "none"\n'
        '[[listener]]\naddress = "127.0.0.1:0"\nmode = "smtp"\n'
        '[[listener]]\naddress = "0.0.0.0:0"\nmode = "http"\n'
    )
    for command in ("serve", "check-config"):
        result = subprocess.run(
            [sys.executable, "-m", "petrel", command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [
            'petrel: http.auth: "none" is allowed only when every http listener is on'
            " loopback; listener[1] is 0.0.0.0:0"
        ]
    # On loopback it serves without credentials.
    server = petrel_factory(HTTP + '[http]\nauth = "none"\n', name="open")
    assert Api(server).json("GET", "/api/v1/mailboxes") == []
    # ... but only to a loopback Host (a rebound DNS name reads no mail).
    code, _, _ = Api(server).call("GET", "/api/v1/mailboxes", headers={"Host": "evil.example"})
    assert code == 421


def read_event(stream: http.client.HTTPResponse, kind: str) -> dict[str, Any]:
    """The data of the next ``kind`` event on an SSE stream (bounded by the socket timeout)."""
    event = None
    for _ in range(10_000):
        line = stream.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == kind:
            data: dict[str, Any] = json.loads(line[6:])
            return data
    raise AssertionError(f"no {kind} event")


def test_events_stream_tells_of_new_mail(web: PetrelServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", web.ports["http"], timeout=30)
    connection.request(
        "GET", "/api/v1/events", headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)}
    )
    stream = connection.getresponse()
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert stream.readline() == b"retry: 2000\n"  # connected: anything sent now is seen
    send(web, rich_message())
    # Delivered at intake (delivery.direct) it is "accepted" and never "queued".
    assert read_event(stream, "queue")["event"] == "accepted"
    new = read_event(stream, "message")
    assert new["event"] == "new" and new["mailbox"] == f"bob@{HOSTNAME}"
    connection.close()


def scrape(server: PetrelServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, headers, body = admin_api(server).call("GET", "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_count_the_traffic(web: PetrelServer) -> None:
    before = scrape(web)
    accepted = ("petrel_messages_accepted_total", (("source", "smtp"),))
    assert before.get(accepted, 0.0) == 0.0
    for _ in range(2):
        send(web, rich_message())
    web.wait_for_messages("bob", 2)
    with smtplib.SMTP(web.host, web.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        code, _ = client.rcpt("bad/name@" + HOSTNAME)
        assert code == 553
    after = wait_until(
        lambda: (
            (m := scrape(web))[
                ("petrel_deliveries_total", (("outcome", "delivered"), ("transport", "local")))
            ]
            == 2.0
            and m
        ),
        what="two deliveries counted",
    )
    assert isinstance(after, dict)
    assert after[accepted] == 2.0
    assert after[("petrel_messages_rejected_total", (("reason", "bad_address"),))] == 1.0
    assert after[("petrel_connections_total", (("listener", "smtp"),))] == 3.0
    assert after[("petrel_delivery_latency_seconds_count", (("transport", "local"),))] == 2.0
    # one message a commit here (sent one after the other): two batches of one
    assert after[("petrel_commit_batch_messages_count", ())] == 2.0
    assert after[("petrel_commit_batch_messages_bucket", (("le", "1.0"),))] == 2.0
    assert after[("petrel_queue_messages", (("state", "queued"),))] == 0.0
    assert after[("petrel_refusals_total", (("reason", "greylist"),))] == 0.0  # antispam's


def test_two_curl_lines_from_the_readme(web: PetrelServer) -> None:
    send(web, rich_message())
    web.wait_for_messages("bob")
    base = f"http://127.0.0.1:{web.ports['http']}"
    user = f"{ADMIN}:{ADMIN_PASSWORD}"
    listed = subprocess.run(
        ["curl", "-sf", "-u", user, f"{base}/api/v1/mailboxes/bob@{HOSTNAME}/messages"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (summary,) = json.loads(listed.stdout)
    raw = subprocess.run(
        ["curl", "-sf", "-u", user, f"{base}/api/v1/messages/{summary['id']}/raw"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"Subject: Quarterly report" in raw.stdout
    spec = json.loads(admin_api(web).call("GET", "/api/v1/openapi.json")[2])
    assert spec["openapi"].startswith("3.1")
    assert "/api/v1/events" in spec["paths"]


def test_with_workers_the_parent_serves_http_and_counts_every_process(
    petrel_factory: Callable[..., PetrelServer],
) -> None:
    server = petrel_factory(HTTP + '[http]\nauth = "none"\n', server_config="workers = 2")
    api = Api(server)
    for _ in range(3):
        send(server, rich_message())  # a worker's session, delivered at intake by the worker
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        assert client.rcpt("bad/name@" + HOSTNAME)[0] == 553
    server.wait_for_messages("bob", 3)
    (mailbox,) = api.json("GET", "/api/v1/mailboxes")
    assert mailbox["messages"] == 3
    delivered = ("petrel_deliveries_total", (("outcome", "delivered"), ("transport", "local")))
    metrics = wait_until(
        lambda: (m := scrape(server)).get(delivered) == 3.0 and m, what="three deliveries"
    )
    assert isinstance(metrics, dict)
    assert metrics[("petrel_messages_accepted_total", (("source", "smtp"),))] == 3.0
    assert metrics[("petrel_messages_rejected_total", (("reason", "bad_address"),))] == 1.0
    assert metrics[("petrel_connections_total", (("listener", "smtp"),))] == 4.0
    assert metrics[("petrel_sessions_active", ())] == 0.0
    assert api.json("GET", "/api/v1/stats")["rejected"] == 1
