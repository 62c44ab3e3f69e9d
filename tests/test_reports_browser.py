"""Open report.html and comparison.html in real headless Chromium over the DevTools protocol.

Checks like a person would: no console errors or exceptions, no request other than file:/data:,
no dialog (so no injected script ran), every chart <img> decoded, visible and not blank, the
run's key numbers on the page; a screenshot is kept under test-artifacts/.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websocket  # websocket-client (pyproject's dev extra)

from virtproof.reports.compare import render_comparison
from virtproof.reports.finalize import finalize_run
from virtproof.scenarios.model import SLO

from reports_testdata import XSS, finished, make_run

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--remote-debugging-port=0",
         "--remote-allow-origins=*", "--window-size=1280,1600", "--hide-scrollbars"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt install chromium)")

# Runs in the page (DevTools evaluation is not subject to the page's CSP, and adds nothing to it).
PROBE = """
(() => {
  const imgs = Array.from(document.querySelectorAll('img'));
  const charts = imgs.map((img) => {
    const rect = img.getBoundingClientRect();
    const style = getComputedStyle(img);
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    let inked = 0;
    if (img.naturalWidth > 0) {
      const ctx = canvas.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i] < 200 || data[i + 1] < 200 || data[i + 2] < 200) inked++;
      }
    }
    return {id: img.closest('figure') ? img.closest('figure').id : '', complete: img.complete,
            naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
            width: rect.width, height: rect.height, display: style.display, visibility: style.visibility,
            inked: inked, pixels: img.naturalWidth * img.naturalHeight};
  });
  return JSON.stringify({charts: charts, text: document.body.innerText,
                         scripts: document.querySelectorAll('script').length});
})()
"""


@dataclass
class Page:
    ws: Any
    next_id: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)
        raise AssertionError(f"{method}: no answer in {timeout}s")

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise AssertionError(f"no {method} in {timeout}s")

    def errors(self) -> list[str]:
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog opened: {params.get('message')}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Page]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 - closed in finally
    # chromium keeps its own org.chromium.Chromium.* directory under TMPDIR, beside the profile,
    # and leaves it when it is killed: give it this test's
    proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    ws = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start: {(tmp_path / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.loads(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        client = Page(ws)
        for domain in ("Runtime", "Log", "Page", "Network"):
            client.call(f"{domain}.enable")
        yield client
    finally:
        if ws is not None:
            ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        # Chromium's helpers (zygote, renderers) share the session/group we started it in.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _open(page: Page, path: Path, screenshot: str) -> dict[str, Any]:
    page.events.clear()
    page.call("Page.navigate", {"url": path.resolve().as_uri()})
    page.wait_event("Page.loadEventFired")
    probe = json.loads(page.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True})["result"]["value"])
    metrics = page.call("Page.getLayoutMetrics")
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = page.call("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1},
    })
    png = base64.b64decode(shot["data"])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / screenshot).write_bytes(png)
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    assert image.width > 500 and image.height > 500
    low, high = image.getextrema()
    assert high - low > 100, "screenshot is blank"
    return probe


def _check_page(page: Page, probe: dict[str, Any], expected_charts: set[str]) -> None:
    assert page.errors() == []
    assert [u for u in page.requests() if not u.startswith(("file:", "data:"))] == []
    assert probe["scripts"] == 0
    charts = {c["id"]: c for c in probe["charts"]}
    assert expected_charts <= set(charts)
    for chart_id, c in charts.items():
        assert c["complete"] and c["naturalWidth"] > 100 and c["naturalHeight"] > 100, chart_id
        assert c["width"] > 100 and c["height"] > 50, chart_id
        assert c["display"] != "none" and c["visibility"] == "visible", chart_id
        assert c["inked"] > c["pixels"] * 0.01, f"{chart_id} is blank"


def test_report_in_chromium(tmp_path: Path, browser: Page) -> None:
    run = finished(make_run(tmp_path, "20250101-000000-beef", vm_name=XSS))
    result = finalize_run(run.path, [SLO(metric="boot.time_to_ssh_s", stat="p95", max=1000.0)])
    probe = _open(browser, run.path / "report.html", "report.png")
    _check_page(browser, probe, {"chart-boot_cdf", "chart-boot_phases", "chart-migration", "chart-density",
                                 "chart-v2v_verdicts", "chart-v2v_metrics"})
    text = probe["text"]
    stats = json.loads((run.path / "stats.json").read_text())["stats"]
    ssh = next(r for r in stats if r["metric"] == "boot.time_to_ssh_s" and r["labels"] == "")
    assert f"{ssh['p50']:.4g} s" in text and f"{ssh['p95']:.4g}" in text
    assert "20250101-000000-beef" in text and result.gates_passed
    assert f"vm={XSS}-" in text  # the VM name is shown, as text


def test_comparison_in_chromium(tmp_path: Path, browser: Page) -> None:
    a = finished(make_run(tmp_path, "run-a", seed=1, platform="qemu"))
    b = finished(make_run(tmp_path, "run-b", seed=2, scale=1.8, platform="kubevirt"))
    html = render_comparison([a.path, b.path], tmp_path / "cmp")
    probe = _open(browser, html, "comparison.png")
    _check_page(browser, probe, {"chart-ratio_to_best", "chart-cdf_boot.time_to_ssh_s"})
    assert "run-a" in probe["text"] and "kubevirt" in probe["text"]


def test_convergence_map_and_integrity_in_chromium(tmp_path: Path, browser: Page) -> None:
    """A sweep's samples become the convergence chart (predicted and measured boundary), and a move
    that found corrupted pages is listed with its first bad addresses and cause, as text."""
    run = finished(make_run(tmp_path, "20250101-000000-c0de", extra_metrics=False, convergence=True), "failed")
    finalize_run(run.path, [SLO(metric="migration.corrupted_pages", stat="max", max=0.0)])
    probe = _open(browser, run.path / "report.html", "report-convergence.png")
    _check_page(browser, probe, {"chart-convergence"})
    text = probe["text"]
    assert "Guest integrity after migration" in text and "qemu-tcg-dirty-bitmap" in text
    assert "guest-physical 0x1f3a7008" in text and f"lost write) {XSS}" in text  # shown as text, not run
    assert "2 move(s) verified" in text and "1 clean" in text
