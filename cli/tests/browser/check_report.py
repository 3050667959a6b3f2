#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol (CDP, `--remote-debugging-pipe`: commands
on fd 3, replies on fd 4, NUL-terminated JSON) through a `domicile packs report` site, as a
reader would: it opens the matrix, counts the jurisdictions, follows one cell's link to its rule
and reads the citation there, takes a screenshot, and reads the change list. Prints one JSON
object for `cli/tests/packs_report.rs` to judge. Standard library only.

Usage: check_report.py REPORT_DIR SCREENSHOT_PNG
"""

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            sys.exit("chromium is not installed (Debian: apt-get install chromium)")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def wire():
            # fds 3 and 4 as CDP expects, whatever numbers the pipes got.
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.profile = tempfile.mkdtemp(prefix="domicile-report-browser-")
        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}",
                "--window-size=1600,1200",
                "about:blank",
            ],
            # Not close_fds: it would run after `wire` and close fds 3 and 4 again. The pipes'
            # own fds are not inheritable (PEP 446); only 3 and 4 reach chromium.
            close_fds=False,
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def read(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_browser, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    del self.events[i]
                    return event
            self.events.append(self.read())
        raise RuntimeError(f"no {method} within {timeout} s")

    def open(self, url):
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def eval(self, expression):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close", session=False)
        except Exception:
            pass
        self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    report, screenshot = sys.argv[1], sys.argv[2]
    base = "file://" + os.path.abspath(report)
    browser = Browser()
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        browser.session = browser.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
        )["sessionId"]
        browser.send("Page.enable")
        browser.send("Runtime.enable")

        browser.open(base + "/index.html")
        matrix = browser.eval(
            """(() => {
              const first = document.querySelector('table.matrix');
              const rows = [...first.querySelectorAll('tbody tr')];
              return {
                purposes: document.querySelectorAll('table.matrix').length,
                countries: rows.filter(r => r.dataset.kind === 'country').map(r => r.dataset.jurisdiction),
                subdivisions: rows.filter(r => r.dataset.kind === 'subdivision').map(r => r.dataset.jurisdiction),
                cells_without_text: [...document.querySelectorAll('table.matrix td')].filter(td => !td.textContent.trim()).length,
              };
            })()"""
        )
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

        # Follow one cell's link as a reader would (a real click), then read where it landed.
        link = browser.eval(
            """(() => {
              const a = document.querySelector('table.matrix[data-purpose="marketing"] tr[data-jurisdiction="DE"] td[data-channel="voice"] a');
              return { href: a.getAttribute('href'), text: a.textContent, title: a.title };
            })()"""
        )
        browser.events.clear()
        browser.eval(
            """document.querySelector('table.matrix[data-purpose="marketing"] tr[data-jurisdiction="DE"] td[data-channel="voice"] a').click()"""
        )
        browser.wait_for("Page.loadEventFired")
        landed = browser.eval(
            """(() => {
              const target = document.querySelector(':target');
              return {
                url: location.pathname.split('/').pop() + location.hash,
                id: target && target.id,
                citation: target && target.querySelector('.cite').textContent,
                basis: target && target.querySelector('.cell').textContent,
              };
            })()"""
        )

        changes = None
        if os.path.exists(os.path.join(report, "diff.html")):
            browser.open(base + "/diff.html")
            changes = browser.eval(
                """[...document.querySelectorAll('tr.change')].map(r => ({
                    jurisdiction: r.dataset.jurisdiction, what: r.dataset.what,
                    before: r.cells[2].textContent, after: r.cells[3].textContent }))"""
            )
        print(json.dumps({"matrix": matrix, "link": link, "landed": landed, "changes": changes}))
    finally:
        browser.close()


if __name__ == "__main__":
    main()
