"""The report in a real browser: headless Chromium (Debian package ``chromium``, installed by
``make browser``, which ``make test`` runs) driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-separated JSON on file descriptors 3 and 4, no extra dependency).

Skipped, with the reason, only where no Chromium binary is found. The whole browser session is
bounded by a 30 s deadline.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageStat

from mdakit.report.build import write_report
from mdakit.report.context import ReportOptions

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DEADLINE_SECONDS = 30

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium: `make browser` installs the Debian package `chromium` when run "
                             "as root or with passwordless sudo (`apt-get install -y chromium`)")


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become fds 3 (commands) and 4 (replies)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.deadline = time.monotonic() + DEADLINE_SECONDS
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"Chromium did not answer within {DEADLINE_SECONDS} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _console_errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(json.dumps(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    return errors


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_lenet_dir, data_dir) -> tuple[Path, list[str]]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("browser")
    results = root / "results"
    results.mkdir()
    (results / "bench.json").write_text(json.dumps({"environment": {"cpus": 2}, "cells": [{"arch": "lenet5",
                                                                                           "accuracy": 0.5}]}))
    options = ReportOptions(samples=10, max_classes=4, route_classes=2, data_dir=data_dir)
    return write_report([tiny_lenet_dir, results], root / "report.html", options)


def test_report_renders_in_headless_chromium(report, tmp_path):
    path, section_ids = report
    browser = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1600, "deviceScaleFactor": 1,
                                                            "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        probe = ("JSON.stringify({ids: [...document.querySelectorAll('section')].map(s => s.id), "
                 "images: document.images.length, "
                 "broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length, "
                 "external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || "
                 "e.getAttribute('href')).filter(u => /^(https?:)?\\/\\//.test(u)).length})")
        state = json.loads(browser.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                        session=session)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    finally:
        browser.close()
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(shot))

    assert _console_errors(browser.events) == []
    assert state["ids"] == section_ids and "overview" in state["ids"]
    assert state["images"] >= 3 and state["broken"] == 0 and state["external"] == 0
    image = Image.open(io.BytesIO(screenshot.read_bytes())).convert("L")
    assert image.size == (1280, 1600)
    stat = ImageStat.Stat(image)
    assert stat.stddev[0] > 10, "the screenshot is blank"
    extrema = image.getextrema()
    assert extrema[0] < 80 and extrema[1] > 200  # dark text on a light page
