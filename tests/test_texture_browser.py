"""The "Texture a mesh" tab in a real browser (headless Chromium through Playwright, as ``tests/test_browser.py``).

Uploads an example mesh, types a prompt, clicks Generate and waits for the textured ``.glb`` in the ``gr.Model3D``
viewer (the file it loads is fetched and read back with trimesh: 12 faces, a 512 px texture; headless Chromium
without a GPU may draw nothing, so the pixels are not judged), the download links and the views; then uploads a text file renamed ``.glb`` and sees the one-line message.
Skips, with the reason, when Playwright or Chromium is missing.
"""

from __future__ import annotations

import pytest

from tests.test_browser import (  # noqa: F401 -- the fixtures are used by name
    IMAGE_LOADED_JS,
    PIXEL_STATS_JS,
    TIMEOUT_MS,
    assert_nontrivial,
    browser,
    expect,
    open_advanced,
    page,
    set_slider,
    url,
)

pytestmark = pytest.mark.browser


def test_texture_tab_uploads_a_mesh_and_shows_the_textured_model(page, tmp_path):  # noqa: F811
    import trimesh

    from pipelines.texture import example_meshes

    mesh, prompt = example_meshes()[0]
    page.get_by_role("tab", name="Texture a mesh").click()
    page.locator("#texture-mesh input[type=file]").set_input_files(str(mesh))
    page.locator("#texture-prompt textarea").fill(prompt)
    open_advanced(page, "texture")
    set_slider(page, "texture-steps", 2)
    page.locator("#texture-generate").click()
    expect(page.locator("#texture-info")).to_contain_text("faces textured from 6 views", timeout=TIMEOUT_MS)
    page.locator("#texture-model canvas").first.wait_for(timeout=TIMEOUT_MS)
    # the viewer holds the textured .glb: fetch what it loads and read it back
    href = page.locator("#texture-model [data-testid=model3d-download-link]").get_attribute("href")
    assert href and href.endswith("textured.glb"), href
    body = page.request.get(href).body()
    assert body[:4] == b"glTF"
    glb = tmp_path / "shown.glb"
    glb.write_bytes(body)
    (mesh,) = trimesh.load(glb).geometry.values()
    assert len(mesh.faces) == 12 and mesh.visual.material.baseColorTexture.size == (512, 512)
    links = page.locator("#texture-files a")
    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    assert any(h.endswith("textured.glb") for h in hrefs) and any(h.endswith("texture.png") for h in hrefs), hrefs
    images = page.locator("#texture-gallery img")
    images.nth(6).wait_for(timeout=TIMEOUT_MS)  # six views and the texture
    images.nth(6).evaluate(IMAGE_LOADED_JS)
    assert_nontrivial(images.nth(6).evaluate(PIXEL_STATS_JS), 64)
    page.screenshot(path=str(tmp_path / "08_texture.png"), full_page=True)

    # a text file renamed .glb: one clear message on the page
    bad = tmp_path / "notes.glb"
    bad.write_text("not a mesh")
    page.locator("#texture-mesh button[aria-label='Clear'], #texture-mesh button[title='Clear']").first.click()
    page.locator("#texture-mesh input[type=file]").set_input_files(str(bad))
    page.locator("#texture-generate").click()
    page.get_by_text("is not a binary glTF (.glb) file").first.wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "09_texture_error.png"), full_page=True)
