"""The page in a real headless browser: Debian's Chromium driven by Playwright.

Skipped, with the reason, where Chromium or Playwright is missing; ``.ci/run``
installs both.  The screenshot is saved as ``browser_page.png`` in pytest's
temporary directory, or in ``$SCREENSHOT_DIR`` when that is set.
"""
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_server.config import Config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine "
                                "(Debian: apt-get install chromium)")

# Flags for a root, sandbox-less, offline machine (see the project's CI notes).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(clip, tiny_model_files, serve):
    model_path, weights_path = tiny_model_files
    port, _ = serve(Config(source=str(clip), model_path=model_path, weights_path=weights_path), None)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 800})
        browser.close()


def test_page_streams_and_charts_an_upload(server, page, faces, tmp_path):
    page.goto(server)
    stream = page.locator("#stream")
    page.wait_for_function("document.getElementById('stream').naturalWidth > 0", timeout=15000)
    assert page.evaluate("document.getElementById('stream').naturalWidth") == 320

    # the stream updates: the face list follows the frames sent as server-sent events
    page.wait_for_function("document.getElementById('status').textContent.includes('frame')",
                           timeout=15000)
    first = page.locator("#status").text_content()
    page.wait_for_function(f"document.getElementById('status').textContent !== {first!r}",
                           timeout=10000)
    before = stream.screenshot()
    changed = False
    for _ in range(30):  # the MJPEG image itself changes too (the clip plays at 10 fps; up to 9 s on a slow machine)
        page.wait_for_timeout(300)
        changed = stream.screenshot() != before
        if changed:
            break
    assert changed

    photo = tmp_path / "two_faces.png"
    canvas = np.full((250, 480), 170, np.uint8)
    for i, name in enumerate(("Happy", "Surprise")):
        x = 60 + i * 210
        canvas[50:200, x:x + 150] = cv2.resize(faces[name], (150, 150), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(photo), canvas)
    page.set_input_files("#upload-file", str(photo))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-faces .face", timeout=15000)
    assert page.locator("#upload-faces .face").count() == 2
    assert page.locator("#upload-faces .face").first.locator(".bar").count() == 7
    assert page.locator("#upload-canvas").is_visible()

    shots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "browser_page.png"), full_page=True)


def test_upload_error_is_shown(server, page, tmp_path):
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not a picture")
    page.goto(server)
    page.set_input_files("#upload-file", str(junk))
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("document.getElementById('upload-error').textContent.length > 0",
                           timeout=10000)
    assert "not an image" in page.locator("#upload-error").text_content()


def test_browser_camera_mode_sends_frames_to_the_api(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + [
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        page = browser.new_page()
        page.goto(server)
        with page.expect_response(lambda r: r.url.endswith("/api/predict") and r.ok, timeout=15000):
            page.click("#mode-camera")
        page.wait_for_function("document.getElementById('status').textContent.includes('your camera')",
                               timeout=10000)
        assert page.locator("#camera-view").is_visible()
        assert not page.locator("#server-view").is_visible()
        assert page.evaluate("document.getElementById('stream').getAttribute('src')") == ""
        browser.close()


def test_grid_timeline_and_explanations(clip, tiny_model_files, serve, page, tmp_path):
    model_path, weights_path = tiny_model_files
    port, _ = serve(Config(source=(f"left={clip}", f"right={clip}"), model_path=model_path,
                           weights_path=weights_path), None)
    page.goto(f"http://127.0.0.1:{port}")
    assert page.locator(".tile").count() == 2
    for stream in ("#stream", "#stream-right"):  # both streams deliver
        page.wait_for_function(f"document.querySelector('{stream}').naturalWidth === 320", timeout=15000)
    page.click(".tile[data-source=right]")
    assert page.locator(".tile.focused").get_attribute("data-source") == "right"
    assert page.locator("#focused-name").text_content() == "(right)"

    # the timeline of the focused source grows with its events
    page.wait_for_selector("#timeline canvas", timeout=15000)
    points = int(page.locator("#timeline canvas").first.get_attribute("data-points"))
    page.wait_for_function(f"Number(document.querySelector('#timeline canvas').dataset.points) > {points}",
                           timeout=10000)
    page.wait_for_function("document.querySelector('.tile[data-source=left] .tile-faces').textContent"
                           ".includes('#')", timeout=10000)  # the other tile lists its own faces

    page.check("#explain-toggle")
    page.wait_for_function("[...document.querySelectorAll('.tile[data-source=right] .heat')]"
                           ".some((h) => h.naturalWidth === 48)", timeout=15000)
    shots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "browser_grid.png"), full_page=True)
    page.uncheck("#explain-toggle")
    assert page.locator(".heat").count() == 0

    # an explanation answer that comes back after the toggle was switched off draws nothing: hold the
    # requests until the toggle is off, then let them through
    held = []
    page.route("**/api/faces?*explain=1*", lambda route: held.append(route))
    page.check("#explain-toggle")
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page asked for no explanation"
    page.uncheck("#explain-toggle")
    for route in held:
        route.continue_()
    page.wait_for_timeout(1500)  # the answers arrive and are handled
    assert page.locator(".heat").count() == 0
    page.unroute("**/api/faces?*explain=1*")
