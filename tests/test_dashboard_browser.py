"""A real browser drives ddpm-dashboard: headless Chromium (the Debian package) over the Chrome
DevTools protocol launches a tiny run from the Train page with a double click (one run starts),
sees its grid, stops and resumes it on the Runs page, samples from it on the Sample page, and saves
screenshots."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import tiny_train_overrides

from ddpm.checkpoint import load_checkpoint
from ddpm.dashboard import runs
from ddpm.dashboard.launch import default_experiment, trainer_pid

pytestmark = pytest.mark.slow
MAX_STEPS = 100_000
websocket = pytest.importorskip("websocket")  # websocket-client, in the [dashboard] extra
pytest.importorskip("streamlit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> object:
    end = time.monotonic() + timeout
    while True:
        try:
            got = pred()
        except OSError:
            got = None
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


# No proxies for the app on 127.0.0.1: urlopen's global opener keeps the proxy variables of its first
# use, and other tests cut the network with a dead proxy while they run.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> str:
    with _DIRECT.open(url, timeout=5) as r:
        return r.read().decode()


class Browser:
    """One Chromium tab over the DevTools protocol: navigate, type, click, read text, screenshot."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg.get("result", {})

    def js(self, expr: str) -> object:
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in res, res["exceptionDetails"]
        return res["result"].get("value")

    def text(self) -> str:
        return str(self.js("document.body ? document.body.innerText : ''"))

    def wait_text(self, needle: str, timeout: float) -> None:
        try:
            wait_for(lambda: needle in self.text(), timeout, f"{needle!r} on the page")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the page reads:\n{self.text()[-3000:]}") from None

    def goto(self, url: str, ready: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_text(ready, 60)

    def type_into(self, label: str, text: str) -> None:
        """Focus the text input labelled ``label``, replace its text with typed text, press Enter."""
        sel = json.dumps(f'input[aria-label="{label}"]')
        wait_for(lambda: self.js(f"!!document.querySelector({sel})"), 30, f"the input {label!r}")
        self.js(f"(() => {{ const e = document.querySelector({sel}); e.focus(); e.select(); }})()")
        self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r")

    def click(self, label: str, timeout: float = 60) -> tuple[float, float]:
        """Click (mouse down and up at its centre) the enabled button of the page body whose text is
        ``label`` (not Streamlit's own toolbar, which has a Stop button of its own while a script runs),
        once the app is idle and the button is not a stale one left from the previous run of the page.
        Returns where it clicked."""
        find = (
            "(() => { if (document.querySelector('[data-testid^=\"stStatusWidgetRunning\"]')) return null;"
            " const main = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
            " const b = [...main.querySelectorAll('button')].find(b => b.innerText.trim() === LABEL && !b.disabled"
            " && !b.closest('[data-stale=\"true\"]'));"
            " if (!b) return null; b.scrollIntoView({block: 'center'}); const r = b.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        ).replace("LABEL", json.dumps(label))
        x, y = wait_for(lambda: self.js(find), timeout, f"an enabled button {label!r} in an idle app")
        self.press(x, y)
        return x, y

    def press(self, x: float, y: float, count: int = 1) -> None:
        """Mouse down and up at (x, y); ``count=2`` is the second click of a double click."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=count)

    def screenshot(self, path: Path) -> Path:
        wait_for(lambda: self.js("[...document.images].every(i => i.complete && i.naturalWidth > 0)"), 30, "the images to load")
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


@pytest.fixture()
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs headless Chromium: apt-get install chromium (.ci/run does)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def test_browser_trains_watches_stops_resumes_and_samples(chromium: str, data_dir: Path, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    port, cdp_port = free_port(), free_port()
    env = {**os.environ, "DDPM_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "ddpm.dashboard.cli", "--outputs", str(outputs), "--port", str(port)],
        env=env,
        stdout=open(tmp_path / "server.log", "wb"),  # noqa: SIM115  (closed with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    browser_proc = None
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{url}/_stcore/health") == "ok", 180, "the dashboard to serve")  # slow under load
        browser_proc = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",  # root in a container
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--remote-debugging-port={cdp_port}",
                "--window-size=1400,1100",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "chromium.log", "wb"),  # noqa: SIM115
        )
        targets = wait_for(lambda: json.loads(http_get(f"http://127.0.0.1:{cdp_port}/json/list")), 60, "Chromium's DevTools")
        page = next(t for t in targets if t["type"] == "page")
        b = Browser(page["webSocketDebuggerUrl"])
        b.call("Page.enable")

        # Train: the whole run from the typed overrides (group choices left at their defaults: on a
        # machine without CUDA the page starts from experiment=quickstart).
        b.goto(f"{url}/train", "Extra overrides")
        assert "Deploy" not in b.text()  # Streamlit's toolbar is hidden (client.toolbarMode=viewer)
        cache = tmp_path / "cache"
        # max_steps out of reach and no time budget: the run trains until stopped, however fast the machine
        extra = tiny_train_overrides(
            data_dir,
            cache,
            **{"train.max_steps": MAX_STEPS, "train.sample_every": 10, "train.log_every": 5, "train.time_budget_min": "null"},
        )
        b.type_into("Extra overrides", " ".join(extra))
        start = f"experiment={default_experiment()} " if default_experiment() else ""
        b.wait_text(f"ddpm-train {start}model=tiny", 60)
        b.type_into("Run name (directory train/<name> under the outputs root)", "browser")
        time.sleep(1)  # let the rerun for the name settle before the click
        # A double click whose second press comes once the first has started the run (a quicker second
        # press only interrupts the first click's rerun): one run, under the name typed.
        x, y = b.click("Launch")
        wait_for(lambda: (outputs / "train" / "browser").is_dir(), 60, "the first click's run folder")
        b.press(x, y, count=2)
        b.wait_text("train/browser exists already: it was launched by the first click", 60)
        time.sleep(2)  # anything a late rerun would start
        assert [p.name for p in (outputs / "train").iterdir()] == ["browser"]
        assert "error:" not in b.text()
        b.wait_text("latest grid: step_", 240)
        b.screenshot(tmp_path / "training.png")
        run = outputs / "train" / "browser"
        assert (run / "samples").is_dir() and any((run / "samples").glob("step_*.png"))

        # Runs: stop it (SIGTERM: a checkpoint), resume it, watch it pass that step, stop it again.
        b.goto(f"{url}/", "Runs")
        b.wait_text("train/browser · running", 60)
        b.click("Stop training")
        b.wait_text("train/browser · stopped", 120)
        assert "received SIGTERM" in (run / "train.log").read_text()
        stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
        assert stopped_at >= 10
        b.click("Resume training")
        b.wait_text("train/browser · running", 240)  # a new process: imports and data load, slow under load
        wait_for(lambda: runs.run_info(outputs, "train/browser").step >= stopped_at + 10, 240, "the resumed run to train on")
        shown = re.compile(rf"step (\d+) / {MAX_STEPS}")
        wait_for(lambda: (m := shown.search(b.text())) and int(m.group(1)) >= stopped_at + 10, 60, "the page to follow the run")
        assert re.search(rf"resumed from \S+ at step {stopped_at}\b", (run / "train.log").read_text())
        b.click("Stop training")
        b.wait_text("train/browser · stopped", 120)
        assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] >= stopped_at + 10
        assert (run / "train.log").read_text().count("received SIGTERM") == 2
        b.goto(f"{url}/", "train/browser · stopped")  # a fresh view: nothing left of the live one
        b.wait_text("Resume training", 30)
        assert "Stop training" not in b.text()
        b.screenshot(tmp_path / "dashboard.png")

        # Sample: the command's grid and GIFs with download buttons, then one new digit per click.
        b.goto(f"{url}/sample", "Checkpoint")
        b.click("Sample")
        b.wait_text("Download noise.gif", 240)
        assert len(list((outputs / "sample").glob("browser-*/samples.png"))) == 1
        b.click("New image")
        b.wait_text("a new digit per click (mnist, seed 0)", 120)
        b.click("New image")
        b.wait_text("a new digit per click (mnist, seed 1)", 120)
        b.screenshot(tmp_path / "sample.png")
        assert not any(trainer_pid(lock.parent) for lock in outputs.glob("train/*/.lock")), "a run still trains"
        assert "error:" not in b.text()
    finally:
        if browser_proc is not None:
            browser_proc.terminate()
            browser_proc.wait(timeout=30)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        for lock in outputs.glob("train/*/.lock"):  # a failed test must not leave a run training
            pid = trainer_pid(lock.parent)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
