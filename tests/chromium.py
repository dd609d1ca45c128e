"""A real headless Chromium driven over the DevTools protocol, for testing pages as a browser runs them.

Debian's `chromium` starts with `--remote-debugging-port=0` and writes the port it chose into its
profile directory; we attach to its page over a WebSocket (websocket-client) and speak plain CDP:
navigate, wait for load, evaluate JavaScript, take a screenshot, and collect every console error,
uncaught exception and failed resource load the page produced. A missing chromium skips locally
and fails under CI (`tests/ci_tools.py`); `make system-deps` installs it.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket

from tests.ci_tools import require_tool

WIDTH, HEIGHT = 1100, 1500


class Page:
    """One browser tab; `errors` holds every console error / exception / failed load seen so far."""

    def __init__(self, ws_url: str) -> None:
        self._ws = websocket.create_connection(ws_url, timeout=20, suppress_origin=True)
        self._ids = itertools.count(1)
        self.errors: list[str] = []
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method)
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                  mobile=False)  # fmt: skip

    def close(self) -> None:
        self._ws.close()

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a)) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are recorded."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self._event(message)

    def pump(self, seconds: float) -> None:
        """Read events for `seconds` (the page's own timers and fetches keep running meanwhile)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._ws.settimeout(left)
            try:
                self._event(json.loads(self._ws.recv()))
            except websocket.WebSocketTimeoutException:
                break
        self._ws.settimeout(20)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.evaluate("document.readyState") == "complete":
                return
            self.pump(0.05)
        raise AssertionError(f"{url} did not finish loading")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self, selector: str) -> str:
        return str(self.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''"))

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page (not only the viewport)."""
        height = int(self.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom) + 16"))
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=max(height, 400),
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


@contextmanager
def chromium(tmp: Path) -> Iterator[Page]:
    binary = require_tool("chromium", "chromium-browser",
                          install="Debian package 'chromium' (make system-deps installs it)")  # fmt: skip
    profile = tmp / "chromium-profile"
    profile.mkdir()
    log = (tmp / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    page = None
    try:
        port = _devtools_port(profile, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.loads(resp.read())
        target = next(t for t in targets if t.get("type") == "page")
        page = Page(target["webSocketDebuggerUrl"])
        yield page
    finally:
        if page is not None:
            page.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes]) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.is_file() and (lines := marker.read_text().splitlines()):
            return int(lines[0])
        time.sleep(0.05)
    raise AssertionError("chromium did not open its DevTools port")
