"""The web console in a real headless browser: Debian's chromium driven by Selenium.

It opens the inbox, sees a message sent with smtplib appear without a reload, opens it,
sees its HTML part inside the sandboxed iframe (where the message's own script does not
run, so it cannot reach the console), and holds and releases a queued message.
Screenshots go to ``test-artifacts/`` (``$PETREL_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import smtplib
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import HOSTNAME, PetrelServer, wait_until

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PETREL_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

CONFIG = """
[[listener]]
address = "127.0.0.1:0"
mode = "http"

[http]
auth = "none"

[domains]
relay_networks = ["127.0.0.0/8"]
"""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (os.access(CHROMEDRIVER, os.X_OK) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail("chromium and chromium-driver are missing: run `make system-deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI; the page under test is ours
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,900",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def send(server: PetrelServer, subject: str, html: str, to: str = f"bob@{HOSTNAME}") -> None:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Plain part.\n")
    message.add_alternative(html, subtype="html")
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.send_message(message)


def poll(driver: WebDriver, find: Callable[[], object], what: str) -> object:
    """wait_until for the page: a missing element is just 'not yet'."""

    def attempt() -> object:
        try:
            return find()
        except WebDriverException:
            return None

    return wait_until(attempt, timeout=30, what=what)


# The in-frame marker comes first: reaching into the parent throws when the frame is
# cross-origin, and must not hide that the script ran at all.
HOSTILE = (
    "<p id='greeting'>Hello <b>from the HTML part</b></p>"
    "<script>document.body.insertAdjacentHTML('beforeend', '<p id=ran>script ran</p>');"
    " document.title = 'pwned'; parent.document.title = 'pwned';</script>"
)


def test_console_lists_mail_live_and_sandboxes_html(
    petrel_factory: Callable[..., PetrelServer], browser: WebDriver
) -> None:
    server = petrel_factory(CONFIG)
    send(server, "First message", "<p>first</p>")
    server.wait_for_messages("bob")
    browser.get(f"http://127.0.0.1:{server.ports['http']}/")
    title = browser.title
    assert title == f"Petrel — {HOSTNAME}"
    poll(
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, f'button[data-address="bob@{HOSTNAME}"]'),
        "the mailbox in the list",
    )
    poll(browser, lambda: browser.find_element(By.ID, "live").text == "live", "the event stream")
    poll(browser, lambda: "First message" in browser.find_element(By.ID, "messages").text, "row")
    browser.execute_script("window.petrelNotReloaded = true;")

    send(server, "Second message", HOSTILE)
    row = poll(
        browser,
        lambda: next(
            (
                r
                for r in browser.find_elements(By.CSS_SELECTOR, "#messages tbody tr")
                if "Second message" in r.text
            ),
            None,
        ),
        "the new message to appear without a reload",
    )
    assert browser.execute_script("return window.petrelNotReloaded === true;")
    rows = browser.find_elements(By.CSS_SELECTOR, "#messages tbody tr")
    assert "Second message" in rows[0].text  # newest first
    screenshot(browser, "console-inbox")

    row.click()  # type: ignore[attr-defined]
    frame = poll(
        browser,
        lambda: (f := browser.find_element(By.ID, "message-html")).get_attribute("src").endswith(
            "/html"
        )
        and f,
        "the HTML part's frame",
    )
    assert frame.get_attribute("sandbox") == ""  # type: ignore[attr-defined]
    browser.switch_to.frame(frame)
    greeting = poll(browser, lambda: browser.find_element(By.ID, "greeting"), "the HTML part")
    assert greeting.text == "Hello from the HTML part"  # type: ignore[attr-defined]
    assert browser.find_elements(By.ID, "ran") == []  # the message's script did not run
    browser.switch_to.default_content()
    assert browser.title == title
    assert "Plain part." in browser.execute_script(
        "return document.getElementById('message-text').textContent;"
    )
    screenshot(browser, "console-message")


def test_console_holds_and_releases_a_queued_message(
    petrel_factory: Callable[..., PetrelServer], browser: WebDriver
) -> None:
    server = petrel_factory(CONFIG)
    send(server, "To a remote domain", "<p>remote</p>", to="carol@remote.example")
    browser.get(f"http://127.0.0.1:{server.ports['http']}/#/queue")

    def queue_row() -> object:
        rows = browser.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")
        return rows[0] if rows and "deferred" in rows[0].text else None

    row = poll(browser, queue_row, "the deferred message in the queue view")
    queue_id = row.get_attribute("data-id")  # type: ignore[attr-defined]
    assert "carol@remote.example" in row.text  # type: ignore[attr-defined]
    # Only the routed section is on screen: the mail pane is not drawn above the queue.
    assert not browser.find_element(By.ID, "mail").is_displayed()

    def state() -> str:
        cell = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{queue_id}"] .state')
        return str(cell.text)

    def listing() -> str:
        result = server.petrel_cli("queue", "list")
        assert result.returncode == 0, result.stderr
        return result.stdout

    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{queue_id}"] [data-action="hold"]').click()
    poll(browser, lambda: state() == "held", "the message to show as held")
    assert f"{queue_id}!" in listing()
    screenshot(browser, "console-queue-held")
    release = f'tr[data-id="{queue_id}"] [data-action="release"]'
    browser.find_element(By.CSS_SELECTOR, release).click()
    poll(browser, lambda: state() != "held", "the message to be released")
    assert f"{queue_id}!" not in listing() and queue_id in listing()

    browser.get(f"http://127.0.0.1:{server.ports['http']}/#/dashboard")
    poll(browser, lambda: browser.find_element(By.ID, "count-accepted").text == "1", "counts")
    assert browser.find_elements(By.CSS_SELECTOR, "#graph svg polyline")
    screenshot(browser, "console-dashboard")
