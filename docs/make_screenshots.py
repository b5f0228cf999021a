"""Take the README's screenshots of the page with the model that ships.

    python -m docs.make_screenshots --video Megamind.avi --photo messi5.jpg
    python -m docs.make_screenshots --grid --video Megamind.avi   # docs/screenshot_grid.png only

Starts ``main.py`` on the video (OpenCV's sample ``Megamind.avi``; Debian's
``opencv-doc`` package has it under /usr/share/doc/opencv-doc/examples/data/),
opens the page in headless Chromium (Playwright, as ``tests/test_browser.py``)
and saves ``docs/screenshot.png`` once faces are listed, then uploads the
photo and saves ``docs/screenshot_upload.png``.  With ``--grid`` it serves
the video and the demo clip (``--source megamind=VIDEO --source demo=demo``)
instead, lets the timeline fill for ``--grid-seconds``, turns the
explanations on and saves ``docs/screenshot_grid.png``.
"""
import argparse
import contextlib
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True)
    p.add_argument("--photo")
    p.add_argument("--port", type=int, default=5077)
    p.add_argument("--grid", action="store_true", help="only the grid screenshot, of two sources")
    p.add_argument("--grid-seconds", type=float, default=25.0)
    args = p.parse_args(argv)
    if args.grid:
        return grid(args)
    if not args.photo:
        p.error("--photo is needed without --grid")
    with served_page(["--source", args.video], args.port) as page:
        page.wait_for_timeout(1500)  # into the scene with both faces
        page.wait_for_function("document.querySelectorAll('#live-faces .face').length >= 2", timeout=60000)
        page.screenshot(path=str(DOCS / "screenshot.png"))
        page.set_input_files("#upload-file", args.photo)
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("#upload-faces .face", timeout=30000)
        page.screenshot(path=str(DOCS / "screenshot_upload.png"), full_page=True)


@contextlib.contextmanager
def served_page(flags, port):
    """``main.py FLAGS --port PORT`` started, and a headless Chromium page open on it; both closed after."""
    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, str(DOCS.parent / "main.py"), *flags, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            yield page
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


def grid(args):
    """``docs/screenshot_grid.png``: two sources in the grid, the timeline filled, explanations on."""
    with served_page(["--source", f"megamind={args.video}", "--source", "demo=demo"], args.port) as page:
        page.wait_for_selector("#timeline canvas", timeout=60000)
        page.wait_for_timeout(args.grid_seconds * 1000)
        page.check("#explain-toggle")
        page.wait_for_selector(".heat", timeout=30000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "screenshot_grid.png"))


if __name__ == "__main__":
    main()
