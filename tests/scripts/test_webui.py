"""scripts/webui.py end to end: the server on a loopback port, the page in headless Chromium (Playwright,
Debian's chromium where it is installed), the shipped shapes models at 2 steps. Drives the page as a user
does: types a prompt, clicks Generate, reads the gallery and the parameters; draws a mask on the inpaint
tab's image; enters a bad value and reads the error."""
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from ldm.inference.images import read_parameters
from tests.scripts.helpers import REPO_ROOT, load_script

START_TIMEOUT_S = 120
GENERATE_TIMEOUT_MS = 120_000  # generous for a loaded CI machine; a generation takes seconds


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"webui.py exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"webui.py did not serve {url} within {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(url, outdir)`` of a running web UI writing into a fresh folder."""
    outdir = tmp_path_factory.mktemp("webui-outputs")
    url = f"http://127.0.0.1:{_free_port()}/"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log = outdir.parent / "webui.log"
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, "scripts/webui.py", "--port", url.rsplit(":", 1)[1].strip("/"),
                                   "--outdir", str(outdir), "--device", "cpu", "--models-in-memory", "2"],
                                  cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(url, server, log)
        yield url, outdir, log
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture(scope="module")
def page(served):
    chromium = shutil.which("chromium")  # Debian's; else Playwright's own, when installed
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(served[0])
        page.wait_for_selector("#txt2img-generate")
        page.requested, page.server_log = requested, served[2]
        yield page
        browser.close()


def _set(page, element_id: str, value: str) -> None:
    page.locator(f"#{element_id} input, #{element_id} textarea").first.fill(value)


def _parameters(page, task: str) -> str:
    return page.locator(f"#{task}-parameters textarea").input_value()


def _server_log_tail(page) -> str:
    return "\n".join(page.server_log.read_text().splitlines()[-30:])


def _generate(page, task: str) -> str:
    """Click the tab's Generate and wait for the parameters of its first image (failing with the
    page's error message when one shows instead)."""
    before = _parameters(page, task)
    page.locator(f"#{task}-generate").click()
    page.wait_for_function(
        """([task, before]) => document.querySelector(`#${task}-parameters textarea`).value !== before
                               || document.querySelector('[data-testid="toast-body"]') !== null""",
        arg=[task, before], timeout=GENERATE_TIMEOUT_MS)
    toasts = page.locator('[data-testid="toast-body"]')
    assert toasts.count() == 0, f"the page shows an error: {toasts.first.inner_text()}\n{_server_log_tail(page)}"
    return _parameters(page, task)


def test_txt2img_shows_the_image_with_its_parameters_and_saves_it(page, served):
    _set(page, "txt2img-prompt", "a blue circle")
    for name, value in (("steps", "2"), ("seed", "7"), ("n_iter", "1"), ("n_samples", "1")):
        _set(page, f"txt2img-{name}", value)
    assert _generate(page, "txt2img") == ("a blue circle\nSteps: 2, Sampler: DDIM, CFG scale: 9.0, Seed: 7, "
                                          "Size: 64x64, Model hash: 30ab8b4a75, Model: shapes-txt2img")
    expect(page.locator("#txt2img-gallery img").first).to_be_visible()
    saved = served[1] / "txt2img-samples" / "samples" / "00000.png"
    assert read_parameters(str(saved)) == _parameters(page, "txt2img")
    assert Image.open(saved).size == (64, 64)
    shown = page.locator("#txt2img-gallery img").first.get_attribute("src")
    downloaded = Image.open(io.BytesIO(page.request.get(urllib.parse.urljoin(served[0], shown)).body()))
    assert downloaded.info["parameters"] == _parameters(page, "txt2img")  # the PNG itself, parameters and all
    assert all(url.startswith(served[0]) for url in page.requested)  # nothing fetched from elsewhere


def test_reuse_seed_and_send_to_img2img(page):
    _set(page, "txt2img-seed", "-1")
    page.locator("#txt2img-reuse-seed").click()
    expect(page.locator("#txt2img-seed input")).to_have_value("7")
    page.locator("#txt2img-send-img2img").click()
    expect(page.locator("#img2img-prompt textarea")).to_have_value("a blue circle")
    expect(page.locator("#img2img-steps input")).to_have_value("2")
    expect(page.locator("#img2img-init-img img")).to_be_visible()


def test_png_info_reads_a_png_back_into_the_controls(page, served):
    page.locator("#tab-txt2img-button").click()
    _set(page, "txt2img-prompt", "something else")
    _set(page, "txt2img-seed", "0")
    page.locator("#tab-png-info-button").click()
    saved = served[1] / "txt2img-samples" / "samples" / "00000.png"
    page.locator("#png-info-file input[type=file]").set_input_files(str(saved))
    expect(page.locator("#png-info-parameters textarea")).to_have_value(read_parameters(str(saved)))
    page.locator("#png-info-send-txt2img").click()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a blue circle")
    expect(page.locator("#txt2img-seed input")).to_have_value("7")


def test_the_edit_tab_recolours_with_color_transfer_ticked(page, served):
    source = served[1] / "txt2img-samples" / "samples" / "00000.png"  # txt2img's "a blue circle"
    page.locator("#tab-edit-button").click()
    page.locator("#edit-init-img input[type=file]").set_input_files(str(source))
    expect(page.locator("#edit-init-img img")).to_be_visible(timeout=20_000)
    _set(page, "edit-source_prompt", "a blue circle")
    _set(page, "edit-prompt", "a red circle")
    for name, value in (("steps", "2"), ("inversion_steps", "2"), ("n_iter", "1"), ("n_samples", "1")):
        _set(page, f"edit-{name}", value)
    page.locator("#edit-color_transfer input[type=checkbox]").check()
    parameters = _generate(page, "edit")
    assert "Source prompt: a blue circle" in parameters and "Color transfer: True" in parameters
    assert read_parameters(str(served[1] / "edit-samples" / "samples" / "00000.png")) == parameters


def _draw_stroke_across_the_middle(page, canvas, attempts: int = 5) -> None:
    """Drag the brush across the canvas's middle row until the stroke shows on it: on a loaded
    machine the editor may not take the first drag yet (the image still settling in)."""
    def picture() -> bytes:
        page.mouse.move(0, 0)  # the brush cursor is drawn over the canvas; keep it off the picture
        page.wait_for_timeout(300)
        return canvas.screenshot()

    empty = picture()
    for _ in range(attempts):
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 30, y)
        page.mouse.down()
        for step in range(7):
            page.mouse.move(x - 30 + 10 * step, y, steps=2)
        page.mouse.up()
        if picture() != empty:
            return
    raise AssertionError(f"no stroke shows on the inpaint canvas after {attempts} drags")


def test_inpaint_repaints_where_the_mask_is_drawn(page, served):
    """txt2img's image sent to the inpaint tab, a stroke drawn across it with the mouse, generated."""
    source = served[1] / "txt2img-samples" / "samples" / "00000.png"
    image = Image.open(source).convert("RGB")
    page.locator("#tab-txt2img-button").click()
    page.locator("#txt2img-send-inpaint").click()
    expect(page.locator("#inpaint-init-img").get_by_text("Upload an image")).to_be_hidden(timeout=20_000)
    canvas = page.locator("#inpaint-init-img canvas").first
    expect(canvas).to_be_visible()
    _draw_stroke_across_the_middle(page, canvas)
    _set(page, "inpaint-steps", "2")
    parameters = _generate(page, "inpaint")
    assert "Model: shapes-inpainting, Inpainting: model" in parameters
    saved = served[1] / "inpaint-samples" / "samples" / "00000.png"
    out = np.asarray(Image.open(saved).convert("RGB"), dtype=np.int16)
    changed = np.abs(out - np.asarray(image, dtype=np.int16)).max(axis=-1) > 0
    assert changed[32].any()  # the stroke crossed the middle row


def test_a_bad_value_shows_the_scripts_error_in_the_page(page, served):
    page.locator("#tab-txt2img-button").click()
    _set(page, "txt2img-steps", "0")
    page.locator("#txt2img-generate").click()
    expect(page.get_by_text("--steps must be at least 1, got 0")).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    assert sorted(path.name for path in (served[1] / "txt2img-samples" / "samples").iterdir()) == ["00000.png"]



def test_the_server_is_local_unless_asked():
    opt = load_script("webui.py").build_parser().parse_args([])
    assert (opt.listen, opt.share, opt.port, opt.outdir) == (False, False, 7860, "outputs")
