"""Netron and a real browser: serve a quantized model with Netron (PyPI ``netron``), load it
in headless Chromium (Debian ``chromium``), accept Netron's cookie banner, open a Q/DQ node
and check that its name, scale and zero point show; render an HTML report; save a
screenshot of each.

    pip install -e ".[view]"        # netron, websocket-client (Chromium's DevTools protocol)
    python benchmarks/browser_checks.py --model q.onnx --report report.html --out shots/

Exit code 1 when a check fails (each check prints ok/FAILED).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import onnx_ir as ir

TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """Headless Chromium driven over its DevTools protocol (one page)."""

    def __init__(self, width: int = 1600, height: int = 1000):
        import websocket

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            sys.exit("error: no chromium on PATH: apt-get install chromium")
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="onnxq-chromium-")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        page = self._wait(lambda: next(
            (t for t in json.load(urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/json", timeout=2)) if t["type"] == "page"),
            None))
        self.socket = websocket.create_connection(
            page["webSocketDebuggerUrl"], suppress_origin=True, timeout=TIMEOUT_S)
        self.calls = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    @staticmethod
    def _wait(probe, what: str = "the browser"):
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                found = probe()
            except OSError:
                found = None
            if found:
                return found
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what}")

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, script: str):
        result = self.call("Runtime.evaluate", expression=script, returnByValue=True,
                           awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, script: str, what: str):
        return self._wait(lambda: self.evaluate(script), what)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        if full_page:
            height = self.evaluate("document.documentElement.scrollHeight")
            self.call("Emulation.setDeviceMetricsOverride", width=1400, height=int(height),
                      deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


def first_qdq(model_path: Path) -> tuple[str, str, str]:
    """The first activation QuantizeLinear: its name, and its scale and zero point as
    emission wrote them in its doc_string."""
    model = ir.load(model_path)
    node = next(n for n in model.graph if n.op_type == "QuantizeLinear")
    fields = dict(part.split("=") for part in node.doc_string.split("; ")[-1].split())
    return node.name, fields["scale"], fields["zero_point"]


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'ok' if ok else 'FAILED'}: {name}{f' ({detail})' if detail else ''}")
    return ok


def netron_check(browser: Browser, model: Path, out: Path) -> bool:
    import netron

    port = free_port()
    netron.start(str(model), address=("localhost", port), browse=False)
    try:
        browser.open(f"http://localhost:{port}/")
        banner = browser.wait_for(
            "(() => { const b = document.getElementById('message-button');"
            " const t = document.getElementById('message-text');"
            " return b && b.offsetParent && t && t.innerText.includes('cookies')"
            " ? t.innerText : null; })()", "Netron's cookie banner")
        browser.evaluate("document.getElementById('message-button').click()")
        name, scale, zero_point = first_qdq(model)
        element = f"document.getElementById({json.dumps('node-name-' + name)})"
        browser.wait_for(f"!!{element} && getComputedStyle({element}).opacity === '1'",
                         "the laid-out graph")
        browser.evaluate(
            f"(() => {{ const n = document.getElementById({json.dumps('node-name-' + name)});"
            " n.scrollIntoView({block: 'center', inline: 'center'});"
            " const title = n.querySelector('.node-item') || n;"
            " title.dispatchEvent(new MouseEvent('click', {bubbles: true})); })()")
        text = browser.wait_for(
            "(() => { const s = document.getElementById('sidebar-content');"
            " return s && s.innerText.length > 0 ? s.innerText : null; })()",
            "the node's properties")
        time.sleep(1.5)  # the sidebar slides in
        text = browser.evaluate("document.getElementById('sidebar-content').innerText")
        shot = browser.screenshot(out / "netron_qdq.png")
        print(f"screenshot: {shot}")
        return all([
            check("Netron's cookie banner accepted", "cookies" in banner),
            check("the Q/DQ node's name shows", name in text, name),
            check("its scale shows", scale in text, f"scale={scale}"),
            check("its zero point shows", f"zero_point={zero_point}" in text,
                  f"zero_point={zero_point}"),
            check("Netron reads the node without an error", "ERROR" not in text),
        ])
    finally:
        netron.stop()


def report_check(browser: Browser, report: Path, out: Path) -> bool:
    browser.open(report.resolve().as_uri())
    rows = browser.wait_for("document.querySelectorAll('table.sortable tbody tr').length",
                            "the report's table")
    images = browser.evaluate("Array.from(document.images).filter(i => i.complete && "
                              "i.naturalWidth > 0).length")
    first = browser.evaluate("document.querySelector('table.sortable th:nth-child(7)')"
                             ".click(), document.querySelector('table.sortable tbody tr "
                             "td').innerText")
    shot = browser.screenshot(out / f"{report.parent.name}-{report.stem}.png", full_page=True)
    print(f"screenshot: {shot}")
    return all([check("the report's per-layer table renders", rows > 0, f"{rows} rows"),
                check("its plots load offline", images >= 1, f"{images} images"),
                check("sorting by only-this-layer SQNR works", bool(first), first)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a QDQ model to open in Netron")
    parser.add_argument("--report", type=Path, action="append", default=[],
                        help="an HTML report to render (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    browser = Browser()
    try:
        ok = netron_check(browser, args.model, args.out) if args.model else True
        for report in args.report:
            ok = report_check(browser, report, args.out) and ok
    finally:
        browser.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
