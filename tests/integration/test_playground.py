"""The web playground: served self-contained, and chat round trips in a real headless Chromium.

The browser is Debian's ``chromium``, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-separated JSON on fds 3 and 4, so no extra dependency).
``--dump-dom --virtual-time-budget`` is not enough here: virtual time only waits for a fetch's
response headers, so it dumps the page while the reply is still streaming.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image

WIDTH, HEIGHT = 1280, 900
FINISHED = "['done', 'error', 'stopped'].includes(document.body.dataset.state)"
# What the page shows, read from its DOM once a reply has finished.
SNAPSHOT = """(() => {
  const reply = [...document.querySelectorAll(".msg.assistant")].pop();
  const error = reply && reply.querySelector(".error");
  return {
    state: document.body.dataset.state,
    models: [...document.querySelectorAll("#model option")].map((o) => o.value),
    selected: document.getElementById("model").value,
    users: [...document.querySelectorAll(".msg.user .bubble")].map((b) => b.textContent),
    reply: reply ? {
      ...reply.dataset,
      text: reply.querySelector(".content").textContent,
      meta: reply.querySelector(".meta").textContent,
      error: error ? error.textContent : null,
    } : null,
  };
})()"""


CHROMIUM_MISSING = "Chromium is not installed (Debian: apt-get install chromium)"


@pytest.fixture(scope="session")
def chromium() -> str | None:
    """Chromium's path. Without one: skip, before the app starts; in CI the tests fail instead."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM_MISSING}; the playground's browser tests need it")
    return None


class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe; every wait is bounded."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.log_path = workdir / "chromium.log"
        args = [
            binary,
            "--headless",
            "--no-sandbox",  # NOTE: needed as root (CI); the page is our own
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--hide-scrollbars",
            f"--user-data-dir={workdir / 'profile'}",
            f"--window-size={WIDTH},{HEIGHT}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        to_chrome_r, self._to_chrome = _pipe_above(10)
        self._from_chrome, from_chrome_w = _pipe_above(10)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            # NOTE: the pipe ends sit at fds >= 10 so that placing them on 3 and 4 (where
            # --remote-debugging-pipe expects them) cannot overwrite one another.
            self.pid = os.posix_spawn(
                binary,
                args,
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                    (os.POSIX_SPAWN_DUP2, to_chrome_r, 3),
                    (os.POSIX_SPAWN_DUP2, from_chrome_w, 4),
                ],
                setsid=True,
            )
        finally:
            for fd in (log, devnull, to_chrome_r, from_chrome_w):
                os.close(fd)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") != self._last_id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def _receive(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer {method} in time; log: {self.log_tail()}")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                data = os.read(self._from_chrome, 1 << 20)
                if not data:
                    raise RuntimeError(f"Chromium closed the DevTools pipe; log: {self.log_tail()}")
                self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def open(self, url: str) -> str:
        """Navigate the browser's page to ``url``; returns the DevTools session of that page."""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = str(
            self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        )
        self.call("Runtime.enable", session=session)
        self.call("Page.enable", session=session)
        # NOTE: headless --window-size leaves a smaller viewport; the page gets exactly this one.
        viewport = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", viewport, session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(session, expression):
                    return
            except RuntimeError:
                pass  # the page is still loading
            time.sleep(0.25)
        state = self.evaluate(session, "document.body && document.body.dataset.state")
        pytest.fail(
            f"the page did not reach {expression} in {timeout}s (state {state!r}); log: {self.log_tail()}"
        )

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def page_errors(self) -> list[str]:
        """Uncaught exceptions and console.error calls seen in the page."""
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(json.dumps(params.get("args", []))[:500])
        return errors

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", timeout=10)
        if not self._exited(timeout=15):
            os.killpg(self.pid, signal.SIGKILL)  # its own session: the browser and its helpers
            self._exited(timeout=15)
        os.close(self._to_chrome)
        os.close(self._from_chrome)

    def _exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return True
            time.sleep(0.1)
        return False


def _pipe_above(low: int) -> tuple[int, int]:
    """A pipe whose two ends are file descriptors >= ``low`` (close-on-exec)."""
    read, write = os.pipe()
    try:
        return fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, low), fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, low)
    finally:
        os.close(read)
        os.close(write)


@contextlib.contextmanager
def launch(chromium: str | None, workdir: Path) -> Iterator[Browser]:
    if chromium is None:
        pytest.fail(f"{CHROMIUM_MISSING}, and CI must run the browser tests (.ci/run installs it)")
    browser = Browser(chromium, workdir)
    try:
        yield browser
    finally:
        browser.close()


def playground_url(base_url: str, **query: str) -> str:
    return f"{base_url}/playground?{urlencode(query)}"


def assert_real_screenshot(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (WIDTH, HEIGHT)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 16, f"the screenshot is (nearly) one flat colour: {colours}"


def test_playground_is_one_self_contained_page(http: httpx.Client) -> None:
    response = http.get("/playground")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<title>llmaas playground</title>" in page
    # Offline: no CDN, fonts or any other host; the API is reached by relative paths.
    assert "http://" not in page
    assert "https://" not in page
    assert re.findall(r"(?i)(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page) == []
    assert "@import" not in page
    assert re.findall(r"(?i)\b(?:src|href)\s*=\s*[\"'](?!data:)", page) == []
    assert "GET /playground" in http.get("/no-such-route").json()["error"]["message"]


def chat(http: httpx.Client, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The platform's own (non-streaming) answer to what the page sent."""
    body = {"model": "tiny-llama", "messages": messages, "temperature": 0, "max_tokens": 12}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_reply_matches(reply: dict[str, Any], expected: dict[str, Any]) -> None:
    assert reply["state"] == "done", json.dumps(reply)
    assert reply["error"] is None
    assert reply["text"].strip()
    assert reply["text"] == expected["choices"][0]["message"]["content"]
    assert reply["finishReason"] == expected["choices"][0]["finish_reason"]
    assert int(reply["promptTokens"]) == expected["usage"]["prompt_tokens"]
    assert int(reply["completionTokens"]) == expected["usage"]["completion_tokens"]
    assert 0 <= int(reply["ttftMs"]) <= int(reply["latencyMs"])
    for shown in ("prompt tokens", "completion tokens", "first token", "total"):
        assert shown in reply["meta"]


def test_chat_round_trip_in_headless_chromium(
    chromium: str | None, base_url: str, http: httpx.Client, tmp_path: Path
) -> None:
    first, second = "What is llmaas?", "How do I stream?"
    query = {"model": "tiny-llama", "prompt": first, "temperature": "0", "max_tokens": "12", "autorun": "1"}
    with launch(chromium, tmp_path) as browser:
        session = browser.open(playground_url(base_url, **query))
        browser.wait_for(session, FINISHED, timeout=120)
        turn1 = browser.evaluate(session, SNAPSHOT)
        # A second turn typed into the composer: the page sends the whole conversation.
        browser.evaluate(
            session,
            f"document.getElementById('prompt').value = {json.dumps(second)};"
            "document.getElementById('composer').requestSubmit();",
        )
        browser.wait_for(
            session, f"document.querySelectorAll('.msg.assistant').length === 2 && {FINISHED}", 120
        )
        turn2 = browser.evaluate(session, SNAPSHOT)
        screenshot = browser.screenshot(session, tmp_path / "playground.png")
        errors = browser.page_errors()

    # The picker lists the chat models only (minilm is an embedding model).
    assert {"tiny-llama", "tiny-llama-tp2", "tiny-gpt2"} <= set(turn1["models"])
    assert "minilm" not in turn1["models"]
    assert turn1["selected"] == "tiny-llama"
    assert turn1["state"] == "done", json.dumps(turn1)
    # Each streamed reply is the platform's greedy answer to the conversation so far, with the
    # usage the API reports (the second prompt's token count proves the history was sent).
    answer1 = chat(http, [{"role": "user", "content": first}])
    assert_reply_matches(turn1["reply"], answer1)
    history = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": answer1["choices"][0]["message"]["content"]},
        {"role": "user", "content": second},
    ]
    assert turn2["state"] == "done", json.dumps(turn2)
    assert turn2["users"] == [first, second]
    assert_reply_matches(turn2["reply"], chat(http, history))
    assert errors == []
    assert_real_screenshot(screenshot)


def test_api_errors_are_shown_in_the_page(chromium: str | None, base_url: str, tmp_path: Path) -> None:
    query = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": "100000", "autorun": "1"}
    with launch(chromium, tmp_path) as browser:
        session = browser.open(playground_url(base_url, **query))
        browser.wait_for(session, FINISHED, timeout=120)
        shown = browser.evaluate(session, SNAPSHOT)
        errors = browser.page_errors()

    assert shown["state"] == "error", json.dumps(shown)
    reply = shown["reply"]
    assert reply["state"] == "error"
    # The OpenAI error body, readable: its type, status, message and the parameter to fix.
    assert "invalid_request_error" in reply["error"]
    assert "400" in reply["error"]
    assert "max_tokens" in reply["error"]
    assert errors == []
