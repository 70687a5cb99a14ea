"""The Space in a real browser: Debian's chromium driven by Playwright uploads a portrait and
speech, sees the error message for a portrait without a face, then asks for two variations of
the bundled portrait, clicks Generate and waits for the videos, the mesh preview, the plot and
the .npz files. Screenshot: outputs/screenshots/app.png.

Needs the shipped weights (pretrained/moda-base), chromium (`apt-get install chromium`; the
Makefile's test target installs it as root) and the playwright package; skips otherwise.
Playwright's own browser download is not used.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from test_app import MODEL, PORTRAIT, ROOT, make_speech_clip, shared_app

SCREENSHOT = ROOT / "outputs" / "screenshots" / "app.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]

pytestmark = [
    pytest.mark.skipif(not (MODEL / "model_index.json").is_file(),
                       reason="no trained pipeline at pretrained/moda-base — run `make train`"),
    pytest.mark.skipif(shutil.which("chromium") is None,
                       reason="chromium is not installed (apt-get install chromium; `make test` does it as root)"),
]


def test_upload_generate_and_see_the_video_in_chromium(request, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    speech = make_speech_clip(tmp_path / "hello.wav")
    url = shared_app(request)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.locator("#generate").wait_for(timeout=60_000)

            # speech first, then a portrait without a face: the error shows in the page
            page.locator("#speech input[type=file]").set_input_files(str(speech))
            page.locator("#speech audio, #speech .waveform-container, #speech [data-testid=waveform-Speech]") \
                .first.wait_for(state="attached", timeout=60_000)
            Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(tmp_path / "gray.png")
            page.locator("#portrait input[type=file]").set_input_files(str(tmp_path / "gray.png"))
            page.locator("#faces-preview img").wait_for(timeout=60_000)
            page.locator("#generate").click()
            error = page.locator(".toast-body.error").first
            error.wait_for(timeout=60_000)
            assert "no face found in the image — use a frontal portrait" in error.inner_text()
            for close in page.locator(".toast-close").all():                   # dismiss the messages
                close.click()

            # the real portrait: faces numbered, two variations, Generate
            page.locator("#portrait button[aria-label='Remove Image']").first.click()
            page.locator("#portrait input[type=file]").set_input_files(str(PORTRAIT))
            page.get_by_text("1 face found").wait_for(timeout=60_000)
            variations = page.locator("#num-variations input[type=number]")
            variations.fill("2")
            variations.press("Enter")
            page.locator("#generate").click()

            page.locator("#video video[src], .toast-body.error").first.wait_for(timeout=120_000)
            assert page.locator(".toast-body.error").count() == 0, page.locator(".toast-body").all_inner_texts()
            page.locator("#mesh-video video[src]").wait_for(timeout=30_000)
            page.locator("#plot img").wait_for(timeout=30_000)
            page.locator("#variations video").nth(1).wait_for(state="attached", timeout=30_000)
            src = page.locator("#video video").get_attribute("src")
            assert src and ".mp4" in src
            files = page.locator("#landmarks").inner_text()
            assert files.count("moda_seed") == 2, files                        # one .npz per variation
            page.wait_for_timeout(500)                                          # let the layout settle
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert not errors, f"JavaScript errors in the page: {errors}"
        finally:
            browser.close()
