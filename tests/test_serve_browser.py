"""`ov3 serve` in a real browser: the command starts the page on 127.0.0.1, headless Debian
Chromium (driven by playwright, pointed at the system browser) uses every view with the mouse and
the keyboard, checks what appears, and saves a screenshot. Skipped, with the reason, where
Chromium or playwright is not installed (`make test` installs both)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="ov3 serve needs the app extra: pip install -e '.[app]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium: install the Debian packages chromium and chromium-driver (make test does, as root)",
                allow_module_level=True)

from serve_helpers import GRID, free_port, make_generator, make_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A quiet, private browser: no network of its own, no first-run pages, a fresh profile per test
# (playwright adds --headless and takes the profile as launch_persistent_context's user_data_dir).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # a loaded 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`ov3 serve` as a user starts it, on a tiny model and generator; yields the page's URL."""
    root = tmp_path_factory.mktemp("browser")
    model = make_model(root)
    run = make_generator(model, root)
    port = free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "openvision3.cli", "serve", "--model", str(model), "--generator",
                             str(run), "--port", str(port), "--gallery-size", "40"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    if proc.poll() is not None or time.time() >= deadline:
        proc.kill()
        pytest.fail(f"ov3 serve did not start: {(root / 'serve.log').read_text()[-2000:]}")
    yield url, root
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def page(server, tmp_path):
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=FLAGS,
                                                    viewport={"width": 1400, "height": 1000})
        try:
            p = ctx.new_page()
            p.set_default_timeout(WAIT_MS)
            p.goto(server[0])
            yield p
        finally:
            ctx.close()


def textbox(page, elem_id):
    return page.locator(f"#{elem_id}").get_by_role("textbox")


def test_every_view_in_headless_chromium(page, server, tmp_path):
    expect = sync_api.expect
    expect.set_options(timeout=WAIT_MS)
    expect(page.get_by_role("heading", name="OpenVision 3 explorer")).to_be_visible()
    # a file that is not an image: the page says so, in the input's note and in each view
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is not a picture")
    page.set_input_files("#image-input input[type=file]", str(bad))
    expect(page.locator("#input-note")).to_contain_text("'holiday.jpg' cannot be used: not an image")
    expect(page.locator("#recon-message")).to_contain_text("not an image")

    # the mouse picks a held-out example: every image view fills in
    page.locator("#examples img").first.click()
    expect(page.locator("#recon-message")).to_contain_text("PSNR")
    for elem in ("recon-original", "recon-output", "recon-diff", "tokens-pca", "tokens-sim"):
        expect(page.locator(f"#{elem} img")).to_be_visible()
    expect(page.locator("#zs-probs")).to_contain_text("red circle")
    assert textbox(page, "caption").input_value().strip()

    # Reconstruct: σ typed on the keyboard, then the button
    sigma = page.locator("#sigma input[type=number]")
    sigma.fill("1.25")
    sigma.press("Enter")
    page.locator("#recon-button").click()
    expect(page.locator("#recon-message")).to_contain_text("σ = 1.25")

    # Tokens: a click on the lower-left token of the PCA picture, then a token typed by row and column
    pca = page.locator("#tokens-pca img")
    box = pca.bounding_box()
    pca.click(position={"x": box["width"] * 0.1, "y": box["height"] * 0.9})
    expect(page.locator("#tokens-message")).to_contain_text(f"token ({GRID - 1}, 0): cosine to itself 1.00")
    row = page.locator("#token-row input")
    row.fill("1")
    row.press("Enter")
    expect(page.locator("#tokens-message")).to_contain_text("token (1, 0)")

    # Understand: labels typed, Enter; then an empty list
    labels = textbox(page, "labels")
    labels.fill("blue square, green ring, red star")
    labels.press("Enter")
    expect(page.locator("#zs-probs")).to_contain_text("green ring")
    expect(page.locator("#understand-message")).to_contain_text("3 labels")
    labels.fill(" , ")
    labels.press("Enter")
    expect(page.locator("#understand-message")).to_contain_text("type at least one label")

    # Retrieve: a text query (Enter) -> the top 8 images; the image -> its captions; a gallery that is not there
    query = textbox(page, "query")
    query.fill("red star")
    query.press("Enter")
    expect(page.locator("#search-results img")).to_have_count(8)
    expect(page.locator("#retrieve-message")).to_contain_text("40 images")
    page.locator("#image-search-button").click()
    expect(page.locator("#caption-results")).to_contain_text("cosine")
    # the eighth row: its rank, a caption (shapes captions have no digits) and its cosine
    expect(page.locator("#caption-results")).to_contain_text(re.compile(r"\b8\s+[a-z][a-z ,]+\s+-?\d\.\d+"))
    spec = textbox(page, "gallery-spec")
    spec.fill("folder:/no/such/dir")
    query.press("Enter")
    expect(page.locator("#retrieve-message")).to_contain_text("gallery 'folder:/no/such/dir' cannot be opened")

    # Generate: 4 samples of the third class
    page.locator("#gen-n input[type=number]").fill("4")
    page.locator("#gen-button").click()
    expect(page.locator("#gen-message")).to_contain_text("4 samples of")
    expect(page.locator("#gen-grid img")).to_be_visible()

    # after all that the server still serves: the default gallery again, and a reconstruction
    spec.fill("")
    query.press("Enter")
    expect(page.locator("#retrieve-message")).to_contain_text("40 images")
    page.locator("#recon-button").click()
    expect(page.locator("#recon-message")).to_contain_text("PSNR")
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
