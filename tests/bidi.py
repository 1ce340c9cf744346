"""A small WebDriver BiDi client for the console's Firefox test.

Debian ships firefox-esr but no geckodriver, and Selenium Manager cannot fetch one
offline. Firefox ESR >= 128 speaks WebDriver BiDi itself, so the test starts
``firefox-esr --headless --remote-debugging-port=0`` on a throw-away profile and talks
to ``ws://127.0.0.1:<port>/session`` directly (websocket-client, a synchronous
library, since the tests are synchronous). Only the commands the test needs are here.
Every wait is bounded: a command that gets no answer, or a page condition that never
holds, fails with what it was waiting for.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket

from conftest import wait_until

_LISTENING = re.compile(r"WebDriver BiDi listening on (ws://127\.0\.0\.1:\d+)")

# user.js of the private profile. The remote agent already applies its recommended
# automation prefs; these add that nothing may leave the machine and that no first-run
# or default-browser prompt gets in the way. Every request for a non-loopback host goes
# to a proxy on a closed loopback port, and every host name resolves to 127.0.0.1
# without a DNS query (forceResolve): strace showed Firefox looking up
# firefox.settings.services.mozilla.com through the system resolver despite the proxy,
# and connecting to it directly; with these prefs its only connects are to 127.0.0.1.
PREFS: dict[str, bool | int | str] = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.sessionstore.resume_from_crash": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.no_proxies_on": "127.0.0.1,localhost",
    "network.trr.mode": 5,
    "network.dns.forceResolve": "127.0.0.1",
    "network.dns.disablePrefetch": True,
    "network.predictor.enabled": False,
    "remote.active-protocols": 1,  # WebDriver BiDi only
}


class BidiError(AssertionError):
    """A command the browser answered with an error, or a script that threw."""


class Bidi:
    """One WebDriver BiDi session over a WebSocket: commands, and the events seen so far."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        # The remote agent refuses WebSocket handshakes that carry an Origin header.
        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.ids = itertools.count(1)
        self.command("session.new", capabilities={})

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (no events are subscribed to)."""
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if message["type"] == "error":
                    raise BidiError(f"{method}: {message['error']}: {message.get('message')}")
                result: dict[str, Any] = message["result"]
                return result
        raise BidiError(f"{method}: no answer within {self.timeout} s")

    def close(self) -> None:
        """Close the browser (which ends the session) and the socket."""
        try:
            self.command("browser.close")
        finally:
            self.ws.close()


class Tab:
    """One top-level browsing context: navigate, run script, click, screenshot."""

    def __init__(self, bidi: Bidi, context: str) -> None:
        self.bidi = bidi
        self.context = context

    def navigate(self, url: str) -> None:
        self.bidi.command(
            "browsingContext.navigate", context=self.context, url=url, wait="complete"
        )

    def evaluate(self, expression: str, context: str | None = None) -> Any:
        """The value of ``expression`` (promises awaited) in this tab or one of its frames."""
        answer = self.bidi.command(
            "script.evaluate",
            expression=expression,
            target={"context": context or self.context},
            awaitPromise=True,
        )
        return _value(answer)

    def wait_for(self, expression: str, what: str, context: str | None = None) -> Any:
        """Poll ``expression`` until it is truthy (a script error counts as 'not yet')."""

        def attempt() -> Any:
            try:
                return self.evaluate(expression, context)
            except BidiError:
                return None

        return wait_until(attempt, timeout=30, what=what)

    def click(self, selector: str) -> None:
        """A real mouse click (move, down, up) on the first element matching ``selector``.

        The console re-renders its tables when an event arrives, so the element may go
        missing or be replaced between finding and clicking it: that is retried (bounded)
        with a fresh lookup, as a user would click the row again.
        """
        errors: list[BidiError] = []

        def attempt() -> bool:
            try:
                self._click_once(selector)
            except BidiError as error:
                errors.append(error)
                return False
            return True

        try:
            wait_until(attempt, timeout=30, what=f"a click on {selector!r}")
        except AssertionError as timeout:
            raise BidiError(f"{timeout}: {errors[-1] if errors else ''}") from None

    def _click_once(self, selector: str) -> None:
        node = self.bidi.command(
            "script.callFunction",
            functionDeclaration=(
                "(s) => { const e = document.querySelector(s);"
                " e.scrollIntoView({block: 'center'}); return e; }"
            ),
            arguments=[_argument(selector)],
            target={"context": self.context},
            awaitPromise=False,
        )
        if node["type"] != "success" or node["result"]["type"] != "node":
            raise BidiError(f"no element matches {selector!r}")
        element = {"sharedId": node["result"]["sharedId"]}
        self.bidi.command(
            "input.performActions",
            context=self.context,
            actions=[
                {
                    "type": "pointer",
                    "id": "mouse",
                    "parameters": {"pointerType": "mouse"},
                    "actions": [
                        {
                            "type": "pointerMove",
                            "x": 0,
                            "y": 0,
                            "origin": {"type": "element", "element": element},
                        },
                        {"type": "pointerDown", "button": 0},
                        {"type": "pointerUp", "button": 0},
                    ],
                }
            ],
        )

    def frames(self) -> list[dict[str, Any]]:
        """The child browsing contexts (iframes) of this tab, with their current URLs."""
        tree = self.bidi.command("browsingContext.getTree", root=self.context)
        children: list[dict[str, Any]] = tree["contexts"][0]["children"] or []
        return children

    def screenshot(self, path: Path) -> None:
        shot = self.bidi.command("browsingContext.captureScreenshot", context=self.context)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.bidi.command("browsingContext.close", context=self.context)


def _argument(value: str | int | bool) -> dict[str, Any]:
    kind = (
        "boolean" if isinstance(value, bool) else ("number" if isinstance(value, int) else "string")
    )
    return {"type": kind, "value": value}


def _value(answer: dict[str, Any]) -> Any:
    """A script result as Python: primitives, arrays and plain objects; throws raise."""
    if answer["type"] == "exception":
        details = answer["exceptionDetails"]
        raise BidiError(f"script threw: {details.get('text')}")
    return _remote(answer["result"])


def _remote(value: dict[str, Any]) -> Any:
    kind = value["type"]
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "boolean", "number"):
        return value["value"]
    if kind == "array":
        return [_remote(v) for v in value.get("value", [])]
    if kind == "object":
        return {k: _remote(v) for k, v in value.get("value", [])}
    return value  # nodes, windows, …: the remote reference itself


@contextmanager
def firefox(binary: str, profile: Path) -> Iterator[Bidi]:
    """A headless Firefox on a fresh profile, with a BiDi session; closed at the end."""
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    )
    log_path = profile.parent / "firefox.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-remote",
                "--remote-debugging-port=0",
                "--profile",
                str(profile),
                "about:blank",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:

        def listening() -> re.Match[str] | None:
            if process.poll() is not None:
                raise AssertionError(f"firefox exited early:\n{log_path.read_text()}")
            return _LISTENING.search(log_path.read_text(errors="replace"))

        match = wait_until(listening, timeout=60, what="firefox's WebDriver BiDi listener")
        assert isinstance(match, re.Match)
        bidi = Bidi(match[1] + "/session")
        try:
            yield bidi
        finally:
            bidi.close()
            process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def new_tab(bidi: Bidi, width: int = 1400, height: int = 900) -> Tab:
    """A fresh tab of the given viewport size, so each test starts from a clean page."""
    created = bidi.command("browsingContext.create", type="tab")
    tab = Tab(bidi, created["context"])
    bidi.command(
        "browsingContext.setViewport",
        context=tab.context,
        viewport={"width": width, "height": height},
    )
    return tab
