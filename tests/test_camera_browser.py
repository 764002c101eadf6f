"""The web viewfinder in headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
the page loads, frames arrive, the slider moves the split, a snapshot downloads."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from edge_enhance.camera import Preview, PreviewConfig, SyntheticSource
from edge_enhance.camera.web import WebViewfinder
from tests.test_camera_doubles import RepeatEnhancer

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--disable-extensions", "--disable-sync", "--no-first-run",
         "--disable-component-update", "--disable-default-apps", "--mute-audio"]
W, H = 96, 64


@pytest.fixture(params=["loopback", "token"])
def viewer(request, tmp_path):
    token = "browser-test-token" if request.param == "token" else None
    web = WebViewfinder("127.0.0.1", 0, token=token)
    p = Preview(SyntheticSource(W, H, fps=30), RepeatEnhancer(), [web],
                config=PreviewConfig(snapshot_dir=str(tmp_path / "snaps"))).start()
    deadline = time.monotonic() + 20
    while web._server is None:
        assert p._thread.is_alive() and time.monotonic() < deadline, "viewfinder did not start"
        time.sleep(0.01)
    yield web, p
    p.stop()
    p.wait(10)


def test_viewfinder_in_headless_chromium(viewer, tmp_path):
    web, preview = viewer
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(accept_downloads=True)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))  # CSP violations land here
            page.goto(web.url.replace(web.url.split("/")[2], f"127.0.0.1:{web.port}"))
            # Frames arrive: both MJPEG images decode to their stream sizes, and the server counts sends.
            page.wait_for_function(
                f"() => document.getElementById('after').naturalWidth === {2 * W} && "
                f"document.getElementById('before').naturalWidth === {W}", timeout=20000)
            page.wait_for_function("() => document.getElementById('status').textContent === 'live'", timeout=20000)
            page.wait_for_function("() => document.querySelector('#stats td') !== null", timeout=20000)
            sent0 = web.hub.describe()["sent"]
            deadline = time.monotonic() + 20
            while web.hub.describe()["sent"] < sent0 + 4:  # frames keep arriving, not just one
                assert time.monotonic() < deadline, "MJPEG frames stopped arriving"
                time.sleep(0.02)

            # The slider moves the split: after-image clip and divider follow it.
            slider = page.locator("#split")
            slider.fill("20")
            assert page.eval_on_selector("#after", "e => e.style.clipPath") == "inset(0px 0px 0px 20%)"
            assert page.eval_on_selector("#divider", "e => e.style.left") == "20%"
            slider.focus()
            for _ in range(5):
                page.keyboard.press("ArrowRight")
            assert slider.input_value() == "25"
            assert page.eval_on_selector("#after", "e => e.style.clipPath") == "inset(0px 0px 0px 25%)"

            # Controls reach the loop.
            page.click("button[data-action=strength_down]")
            page.wait_for_function("() => document.getElementById('strength').textContent === '0.9'", timeout=10000)
            assert preview.controls.state.strength == 0.9

            # A snapshot downloads, full size.
            with page.expect_download(timeout=30000) as dl:
                page.click("#snapshot")
            target = tmp_path / "downloaded.png"
            dl.value.save_as(target)
            assert dl.value.suggested_filename.startswith("snapshot-")
            img = np.asarray(Image.open(target))
            assert img.shape == (2 * H, 2 * W, 3)
            assert (tmp_path / "snaps" / dl.value.suggested_filename).read_bytes() == target.read_bytes()
            assert errors == []
        finally:
            browser.close()
