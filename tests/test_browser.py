"""The web demo in a real browser: headless Chromium (Debian's ``chromium`` package) driven by Playwright.

Opens the page, types prompts, clicks Generate on the multi-view, image-to-video and one-step tabs, waits for the
outputs, checks they are images / a playing video with non-trivial content, triggers an error and sees its message,
and saves screenshots under the test's tmp folder (``$DIFFUSION_ADAPTERS_SCREENSHOTS`` copies them elsewhere).

Skips, with the reason, when Playwright or Chromium is missing. Install: ``apt-get install chromium`` and
``pip install playwright`` (the system Chromium is used; ``playwright install`` is not needed).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 240_000  # generation on a busy 2-core CPU

# Mean and standard deviation of an <img>/<video> element's pixels, read through a canvas (same origin).
PIXEL_STATS_JS = """
(el) => {
  const w = el.naturalWidth || el.videoWidth, h = el.naturalHeight || el.videoHeight;
  if (!w || !h) return null;
  const c = document.createElement('canvas'); c.width = w; c.height = h;
  const ctx = c.getContext('2d'); ctx.drawImage(el, 0, 0);
  const d = ctx.getImageData(0, 0, w, h).data;
  let s = 0, s2 = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) { for (let k = 0; k < 3; k++) { s += d[i + k]; s2 += d[i + k] ** 2; n++; } }
  const mean = s / n;
  return {w, h, mean, std: Math.sqrt(Math.max(0, s2 / n - mean * mean))};
}
"""


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium not found at /usr/bin/chromium (apt-get install chromium) or $CHROMIUM_PATH")
    with sync_api.sync_playwright() as pw:
        try:
            instance = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except Exception as err:  # noqa: BLE001 -- any launch failure means no usable browser here
            pytest.skip(f"Chromium could not be started: {err}")
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    os.environ["DIFFUSION_ADAPTERS_PLACEHOLDER"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import app

    config = app.AppConfig(output_dir=tmp_path_factory.mktemp("browser-app"), concurrency_limit=2)
    previous_cache = os.environ.get("GRADIO_TEMP_DIR")
    app.use_output_dir(config.output_dir)
    demo = app.build_demo(config)
    demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_kwargs(config, port=free_port()))
    try:
        yield demo.local_url
    finally:
        demo.close()
        os.environ.pop("DIFFUSION_ADAPTERS_PLACEHOLDER", None)
        if previous_cache is not None:
            os.environ["GRADIO_TEMP_DIR"] = previous_cache


@pytest.fixture
def page(browser, url, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.get_by_text("Diffusion adapters").first.wait_for()
    page.locator("#mv-gallery").wait_for()
    page.wait_for_function("() => !document.body.innerText.includes('Loading...')")  # lazy components are in
    yield page
    context.close()
    target = os.environ.get("DIFFUSION_ADAPTERS_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in tmp_path.glob("*.png"):
            shutil.copy(shot, Path(target) / shot.name)


def expect(locator):
    """Playwright's retrying assertions (imported here: Playwright is optional and the module skips without it)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def set_slider(page, elem_id: str, value: int) -> None:
    """Types ``value`` into a slider's number box and waits until the slider itself holds it.

    A value typed while the Advanced accordion is still mounting its children can be reset to the default, so the
    range input is checked and the value typed again until it sticks.
    """
    box = page.locator(f"#{elem_id} input[type=number]")
    slider = page.locator(f"#{elem_id} input[type=range]")
    for _ in range(10):
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(200)
        if slider.input_value() == str(value) and box.input_value() == str(value):
            return
    expect(slider).to_have_value(str(value))


def open_advanced(page, tab: str) -> None:
    page.locator(f"#{tab}-advanced").get_by_text("Advanced").first.click()


#: Resolves once an <img> has finished loading (its pixels can be read only then).
IMAGE_LOADED_JS = "el => el.complete || new Promise(r => el.onload = r)"


def assert_nontrivial(stats, min_side: int) -> None:
    assert stats is not None, "element has no pixels"
    assert min(stats["w"], stats["h"]) >= min_side
    assert stats["std"] > 5, f"flat image: {stats}"


def test_multiview_tab_generates_views(page, tmp_path):
    page.screenshot(path=str(tmp_path / "00_home.png"), full_page=True)
    page.locator("#mv-prompt textarea").fill("a blue sphere")
    open_advanced(page, "mv")
    set_slider(page, "mv-views", 4)
    set_slider(page, "mv-steps", 2)
    page.locator("#mv-generate").click()
    images = page.locator("#mv-gallery img")
    images.nth(3).wait_for(timeout=TIMEOUT_MS)
    assert images.count() >= 4
    for i in range(4):
        images.nth(i).evaluate(IMAGE_LOADED_JS)
        assert_nontrivial(images.nth(i).evaluate(PIXEL_STATS_JS), 64)
    expect(page.locator("#mv-info")).to_contain_text("4 views in", timeout=TIMEOUT_MS)
    assert page.locator("#mv-zip a").first.get_attribute("href")
    page.screenshot(path=str(tmp_path / "01_multiview.png"), full_page=True)


def test_video_tab_generates_a_playable_video(page, tmp_path):
    from pipelines.embedded import example_images

    page.get_by_role("tab", name="Image to video").click()
    page.locator("#i2v-image input[type=file]").set_input_files(str(example_images()[0][0]))
    page.locator("#i2v-prompt textarea").fill("spinning slowly")
    open_advanced(page, "i2v")
    set_slider(page, "i2v-frames", 4)
    set_slider(page, "i2v-steps", 2)
    page.locator("#i2v-generate").click()
    video = page.locator("#i2v-video video")
    video.wait_for(timeout=TIMEOUT_MS)
    ready = video.evaluate(
        """el => new Promise(resolve => {
             const done = () => resolve({ready: el.readyState, w: el.videoWidth, h: el.videoHeight, err: el.error});
             if (el.readyState >= 2) return done();
             el.addEventListener('loadeddata', done); el.addEventListener('error', done);
             setTimeout(done, 30000);
           })"""
    )
    assert ready["err"] is None and ready["ready"] >= 2, ready
    assert_nontrivial(video.evaluate(PIXEL_STATS_JS), 128)
    expect(page.locator("#i2v-info")).to_contain_text("4 frames of 64x64 px (shown 4x", timeout=TIMEOUT_MS)
    links = page.locator("#i2v-files a")
    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    assert any(h.endswith(".mp4") for h in hrefs) and any(h.endswith(".gif") for h in hrefs), hrefs
    page.screenshot(path=str(tmp_path / "02_video.png"), full_page=True)


def test_one_step_tab_and_error_message(page, tmp_path):
    page.get_by_role("tab", name="One-step text-to-image").click()
    page.locator("#hipa-prompt textarea").fill("a green cone")
    open_advanced(page, "hipa")
    set_slider(page, "hipa-teacher-steps", 2)
    page.locator("#hipa-generate").click()
    images = page.locator("#hipa-gallery img")
    images.nth(2).wait_for(timeout=TIMEOUT_MS)  # HiPA + the two default comparisons
    images.nth(0).evaluate(IMAGE_LOADED_JS)
    assert_nontrivial(images.nth(0).evaluate(PIXEL_STATS_JS), 64)
    page.screenshot(path=str(tmp_path / "03_one_step.png"), full_page=True)

    # One click on an example fills the prompt and runs the tab again.
    first_src = images.nth(0).get_attribute("src")
    page.get_by_text("a green sphere", exact=True).first.click()
    page.wait_for_function(
        "src => { const img = document.querySelector('#hipa-gallery img'); return img && img.src !== src; }",
        arg=first_src,
        timeout=TIMEOUT_MS,
    )
    assert page.locator("#hipa-prompt textarea").input_value() == "a green sphere"

    # An error: 13 cameras on the multi-view tab -> the message is shown, and the page keeps working.
    page.get_by_role("tab", name="Text to multi-view").click()
    open_advanced(page, "mv")
    azimuths = page.locator("#mv-azimuths textarea, #mv-azimuths input").first
    thirteen = ",".join(str(20 * i) for i in range(13))
    azimuths.fill(thirteen)
    azimuths.press("Tab")  # the box loses focus: its value is committed before the click (a busy CPU once lost it)
    expect(azimuths).to_have_value(thirteen)
    page.wait_for_timeout(300)
    page.locator("#mv-generate").click()
    page.get_by_text("must be between 1 and 12").first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(800)  # let the toast finish fading in
    page.screenshot(path=str(tmp_path / "04_error.png"), full_page=True)


def test_image_to_multiview_example_and_any_resolution(page, tmp_path):
    # Image to multi-view: one click on the example with geometry maps runs it (with the steps set below).
    page.get_by_role("tab", name="Image to multi-view").click()
    open_advanced(page, "i2mv")
    set_slider(page, "i2mv-steps", 2)
    examples = page.locator("#i2mv-examples")
    examples.locator("img").last.click()
    images = page.locator("#i2mv-gallery img")
    images.nth(5).wait_for(timeout=TIMEOUT_MS)
    images.nth(0).evaluate(IMAGE_LOADED_JS)
    assert_nontrivial(images.nth(0).evaluate(PIXEL_STATS_JS), 32)
    expect(page.locator("#i2mv-info")).to_contain_text("6 views in", timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "05_image_to_multiview.png"), full_page=True)

    # Any resolution: 64x128 on the 64 px placeholder, with and without the adapter, shown 4x with the real size.
    page.get_by_role("tab", name="Any resolution").click()
    set_slider(page, "res-width", 128)
    open_advanced(page, "res")
    set_slider(page, "res-steps", 2)
    page.locator("#res-generate").click()
    for elem in ("#res-with img", "#res-without img"):
        page.locator(elem).wait_for(timeout=TIMEOUT_MS)
        page.locator(elem).evaluate(IMAGE_LOADED_JS)
        stats = page.locator(elem).evaluate(PIXEL_STATS_JS)
        assert_nontrivial(stats, 32)
        assert (stats["w"], stats["h"]) == (512, 256), stats
    expect(page.locator("#res-with")).to_contain_text("128x64 px, shown 4x", timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "06_any_resolution.png"), full_page=True)


def test_a_number_typed_outside_a_slider_is_said_on_the_page(page, tmp_path):
    open_advanced(page, "mv")
    box = page.locator("#mv-views input[type=number]")
    box.wait_for()
    page.wait_for_timeout(500)
    box.fill("500")
    box.press("Enter")
    page.locator("#mv-prompt textarea").click()  # the box loses focus: the browser clamps, the page says so
    page.get_by_text("Views must be between 1 and 12, got 500 (the slider stops at 12).").first.wait_for(
        timeout=60_000
    )
    expect(page.locator("#mv-views input[type=range]")).to_have_value("12")
    page.screenshot(path=str(tmp_path / "07_clamped.png"), full_page=True)
