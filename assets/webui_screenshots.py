"""Make the README's screenshots of the web UI, one per tab, with Playwright in headless Chromium:
``python assets/webui_screenshots.py`` (the server runs on a loopback port and writes its images to
a temporary folder). Each tab is shown after a generation with the shipped shapes models, the images
flowing as a user would move them: txt2img's first image sent to img2img and inpaint."""
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ASSETS = Path(__file__).resolve().parent
REPO_ROOT = ASSETS.parent
STEPS = "20"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(outdir: str) -> "tuple[subprocess.Popen, str]":
    port = free_port()
    server = subprocess.Popen([sys.executable, "scripts/webui.py", "--port", str(port), "--outdir", outdir,
                               "--models-in-memory", "3"], cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the web UI did not start")


def fill(page, element_id: str, value: str) -> None:
    page.locator(f"#{element_id} input, #{element_id} textarea").first.fill(value)


def generate(page, task: str) -> None:
    before = page.locator(f"#{task}-parameters textarea").input_value()
    page.locator(f"#{task}-generate").click()
    page.wait_for_function("([t, b]) => document.querySelector(`#${t}-parameters textarea`).value !== b",
                           arg=[task, before], timeout=300_000)
    page.wait_for_function(f"[...document.querySelectorAll('#{task}-gallery img')].some(i => i.complete && "
                           "i.naturalWidth > 0)")
    page.wait_for_timeout(500)


def draw_stroke(page, task: str) -> None:
    canvas = page.locator(f"#{task}-init-img canvas").first
    page.wait_for_timeout(500)
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y - 40)
    page.mouse.down()
    for step in range(9):
        page.mouse.move(x - 40 + 10 * step, y - 40 + 10 * step)
    page.mouse.up()


def shoot(page, name: str) -> None:
    """A full-page screenshot as a 256-colour PNG (a tenth of the size, the same to the eye)."""
    path = ASSETS / f"webui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path}")


def open_tab(page, tab: str) -> None:
    page.locator(f"#tab-{tab}-button").click()
    page.wait_for_timeout(300)


def main() -> None:
    with tempfile.TemporaryDirectory() as outdir, sync_playwright() as playwright:
        server, url = start_server(outdir)
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.wait_for_selector("#txt2img-generate")
            fill(page, "txt2img-steps", STEPS)
            fill(page, "txt2img-n_iter", "1")
            fill(page, "txt2img-n_samples", "4")
            generate(page, "txt2img")
            shoot(page, "txt2img")
            first = sorted((Path(outdir) / "txt2img-samples" / "samples").iterdir())[0]

            for target, prompt in (("img2img", "a green circle above a blue square"), ("inpaint", "a yellow star")):
                open_tab(page, "txt2img")
                page.locator(f"#txt2img-send-{target}").click()
                fill(page, f"{target}-prompt", prompt)
                fill(page, f"{target}-steps", STEPS)
                if target == "inpaint":
                    draw_stroke(page, target)
                generate(page, target)
                shoot(page, target)

            for tab, prompt in (("depth2img", None), ("upscale", None), ("edit", "a green circle above a blue square")):
                open_tab(page, tab)
                page.locator(f"#{tab}-init-img input[type=file]").set_input_files(str(first))
                fill(page, f"{tab}-steps", STEPS if tab != "upscale" else "25")
                if tab == "edit":
                    fill(page, "edit-source_prompt", "a red circle above a blue square")
                    fill(page, "edit-inversion_steps", STEPS)
                    fill(page, "edit-prompt", prompt)
                generate(page, tab)
                shoot(page, tab)

            open_tab(page, "unclip")
            shoot(page, "unclip")
            for tab in ("class", "unconditional"):
                open_tab(page, tab)
                fill(page, f"{tab}-steps", STEPS)
                fill(page, f"{tab}-n_samples", "2" if tab == "class" else "4")
                generate(page, tab)
                shoot(page, tab)

            open_tab(page, "png-info")
            page.locator("#png-info-file input[type=file]").set_input_files(str(first))
            page.wait_for_function("document.querySelector('#png-info-parameters textarea').value !== ''")
            shoot(page, "png-info")
        finally:
            browser.close()
            server.terminate()
            server.wait(timeout=20)


if __name__ == "__main__":
    main()
