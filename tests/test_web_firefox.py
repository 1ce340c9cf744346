"""The web console in Firefox: Debian's firefox-esr driven over WebDriver BiDi.

The same behaviours as the Chromium test (tests/test_web_browser.py), in the other
browser the console promises to work in: the inbox lists a mailbox, a message sent with
smtplib appears without a reload (the live event stream), its HTML part renders inside
the sandboxed iframe where the message's own script does not run and cannot reach the
console, and a queued message is held and released from the queue view. There is no
geckodriver in Debian, so tests/bidi.py speaks BiDi to Firefox itself. One browser
serves the module (its start-up is the slow part); each test gets a fresh tab.
Screenshots go to ``test-artifacts/firefox-*.png``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator

import pytest

from bidi import Bidi, Tab, firefox, new_tab
from conftest import HOSTNAME, PetrelServer, wait_until
from test_web_browser import ARTIFACTS, CONFIG, HOSTILE, send

FIREFOX = shutil.which("firefox-esr")

pytestmark = pytest.mark.skipif(
    FIREFOX is None, reason="firefox-esr is not installed (`make system-deps` installs it)"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bidi]:
    assert FIREFOX is not None
    with firefox(FIREFOX, tmp_path_factory.mktemp("firefox") / "profile") as bidi:
        yield bidi


@pytest.fixture
def tab(browser: Bidi) -> Iterator[Tab]:
    page = new_tab(browser)
    try:
        yield page
    finally:
        page.close()


def js(value: str) -> str:
    """A JS string literal for ``value``."""
    return json.dumps(value)


def test_console_lists_mail_live_and_sandboxes_html(
    petrel_factory: Callable[..., PetrelServer], tab: Tab
) -> None:
    server = petrel_factory(CONFIG)
    send(server, "First message", "<p>first</p>")
    server.wait_for_messages("bob")
    base = f"http://127.0.0.1:{server.ports['http']}"
    tab.navigate(f"{base}/")
    title = tab.evaluate("document.title")
    assert title == f"Petrel — {HOSTNAME}"
    mailbox = f'button[data-address="bob@{HOSTNAME}"]'
    tab.wait_for(f"document.querySelector({js(mailbox)}) !== null", "the mailbox in the list")
    tab.wait_for("document.getElementById('live').textContent === 'live'", "the event stream")
    tab.wait_for(
        "document.getElementById('messages').textContent.includes('First message')", "the row"
    )
    tab.evaluate("window.petrelNotReloaded = true")

    send(server, "Second message", HOSTILE)
    rows = "[...document.querySelectorAll('#messages tbody tr')].map((r) => r.textContent)"
    tab.wait_for(
        f"{rows}.some((t) => t.includes('Second message'))",
        "the new message to appear without a reload",
    )
    assert tab.evaluate("window.petrelNotReloaded === true")
    assert "Second message" in tab.evaluate(rows)[0]  # newest first
    tab.screenshot(ARTIFACTS / "firefox-console-inbox.png")

    tab.click("#messages tbody tr:first-child")
    tab.wait_for(
        "document.getElementById('message-html').src.endsWith('/html')", "the HTML part's frame"
    )
    assert tab.evaluate("document.getElementById('message-html').getAttribute('sandbox')") == ""

    def html_frame() -> str | None:
        return next((f["context"] for f in tab.frames() if f["url"].endswith("/html")), None)

    context = wait_until(html_frame, timeout=30, what="the HTML part's browsing context")
    assert isinstance(context, str)
    # Loaded in full (the script comes after the greeting), so an absent #ran means "never ran".
    greeting = tab.wait_for(
        "document.readyState === 'complete' && document.getElementById('greeting')?.textContent",
        "the HTML part",
        context=context,
    )
    assert greeting == "Hello from the HTML part"
    assert tab.evaluate("document.getElementById('ran') === null", context)  # no script ran
    assert tab.evaluate("document.title", context) != "pwned"
    assert tab.evaluate("document.title") == title
    assert tab.evaluate("document.getElementById('ran') === null")
    assert "Plain part." in tab.evaluate("document.getElementById('message-text').textContent")
    tab.screenshot(ARTIFACTS / "firefox-console-message.png")


def test_console_holds_and_releases_a_queued_message(
    petrel_factory: Callable[..., PetrelServer], tab: Tab
) -> None:
    server = petrel_factory(CONFIG)
    send(server, "To a remote domain", "<p>remote</p>", to="carol@remote.example")
    base = f"http://127.0.0.1:{server.ports['http']}"
    tab.navigate(f"{base}/#/queue")
    first = "document.querySelector('#queue-table tbody tr')"
    queue_id = tab.wait_for(
        f"{first}?.textContent.includes('deferred') && {first}.dataset.id",
        "the deferred message in the queue view",
    )
    assert isinstance(queue_id, str)
    row = f'tr[data-id="{queue_id}"]'
    assert "carol@remote.example" in tab.evaluate(f"document.querySelector({js(row)}).textContent")
    state = f"document.querySelector({js(row + ' .state')})?.textContent"
    # Only the routed section is on screen: the mail pane is not drawn above the queue.
    assert tab.evaluate("getComputedStyle(document.getElementById('mail')).display") == "none"

    def listing() -> str:
        result = server.petrel_cli("queue", "list")
        assert result.returncode == 0, result.stderr
        return result.stdout

    tab.click(f'{row} [data-action="hold"]')
    tab.wait_for(f"{state} === 'held'", "the message to show as held")
    assert f"{queue_id}!" in listing()
    tab.screenshot(ARTIFACTS / "firefox-console-queue-held.png")
    tab.click(f'{row} [data-action="release"]')
    tab.wait_for(f"{state} !== undefined && {state} !== 'held'", "the message to be released")
    assert f"{queue_id}!" not in listing() and queue_id in listing()

    tab.navigate(f"{base}/#/dashboard")
    tab.wait_for("document.getElementById('count-accepted').textContent === '1'", "the counts")
    assert tab.evaluate("document.querySelector('#graph svg polyline') !== null")
    tab.screenshot(ARTIFACTS / "firefox-console-dashboard.png")
