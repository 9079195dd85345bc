"""The report in a real browser: headless Chromium (Debian package ``chromium``, installed by
``make browser``, which ``make test`` runs) driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-separated JSON on file descriptors 3 and 4, no extra dependency).

The page is opened in a 1280 × 800 viewport, a laptop's first screen: the summary must be the first
section and fit in it, chart included. Skipped, with the reason, only where no Chromium binary is
found. The whole browser session is bounded by a 30 s deadline.
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

from mdakit.assembly import assemble, evaluate_assembled, save_assembled
from mdakit.disassembly import disassemble
from mdakit.report.build import write_report
from mdakit.report.context import ReportOptions

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DEADLINE_SECONDS = 30
VIEWPORT = (1280, 800)

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
             "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
             "about:blank"],
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
    """A report of a model, two parts of it, their assembly and a results directory."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("browser")
    parts = [disassemble(tiny_lenet_dir, "mnist", classes, samples=10, data_dir=data_dir).save(root / name)
             for classes, name in (("0,1", "part-01"), ("2,3", "part-23"))]
    model, card = assemble(parts)
    card.metrics = evaluate_assembled(model, card, data_dir=data_dir)
    save_assembled(model, root / "assembled", card)
    results = root / "results"
    results.mkdir()
    (results / "bench.json").write_text(json.dumps({"environment": {"cpus": 2}, "cells": [{"arch": "lenet5",
                                                                                           "accuracy": 0.5}]}))
    options = ReportOptions(samples=10, max_classes=4, route_classes=2, data_dir=data_dir)
    return write_report([tiny_lenet_dir, *parts, root / "assembled", results], root / "report.html", options)


def test_report_renders_in_headless_chromium(report, tmp_path):
    path, section_ids = report
    browser = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                            "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        probe = ("JSON.stringify({ids: [...document.querySelectorAll('section')].map(s => s.id), "
                 "images: document.images.length, "
                 "broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length, "
                 "external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || "
                 "e.getAttribute('href')).filter(u => /^(https?:)?\\/\\//.test(u)).length, "
                 "first: document.querySelector('main > section').id, "
                 "beforeNav: !!(document.getElementById('summary').compareDocumentPosition("
                 "document.querySelector('nav')) & Node.DOCUMENT_POSITION_FOLLOWING), "
                 "scrolled: window.scrollY, viewport: window.innerHeight, "
                 "summary: document.getElementById('summary').getBoundingClientRect().toJSON(), "
                 "charts: [...document.querySelectorAll('#summary img')].map(i => ({loaded: i.complete && "
                 "i.naturalWidth > 0, png: i.src.startsWith('data:image/png'), "
                 "box: i.getBoundingClientRect().toJSON()}))})")
        state = json.loads(browser.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                        session=session)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    finally:
        browser.close()
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(shot))

    assert _console_errors(browser.events) == []
    assert state["ids"] == section_ids and state["ids"][:2] == ["summary", "overview"]
    assert state["images"] >= 3 and state["broken"] == 0 and state["external"] == 0
    assert state["first"] == "summary" and state["beforeNav"]
    summary, viewport = state["summary"], state["viewport"]
    assert state["scrolled"] == 0 and viewport == VIEWPORT[1]
    assert 0 <= summary["top"] and summary["bottom"] <= viewport, f"the summary is not on the first screen: {summary}"
    assert [c["loaded"] and c["png"] for c in state["charts"]] == [True]
    chart = state["charts"][0]["box"]
    assert chart["width"] > 300 and chart["height"] > 150 and chart["bottom"] <= viewport
    image = Image.open(io.BytesIO(screenshot.read_bytes())).convert("L")
    assert image.size == VIEWPORT
    stat = ImageStat.Stat(image)
    assert stat.stddev[0] > 10, "the screenshot is blank"
    extrema = image.getextrema()
    assert extrema[0] < 80 and extrema[1] > 200  # dark text on a light page
