"""`ov3 serve`: start-up time and each view's response time, measured from outside as a user's
browser would see them (HTTP through gradio_client, upload included).

    .venv/bin/python benchmarks/serve_latency.py --model runs/demo/model [--generator runs/gen_tiny]
        [--repeats 5] [--screenshot docs/images/serve.png] [--json]

Starts `ov3 serve` as a subprocess; start-up is the time until the page answers (imports, model
load, the one-time gallery encoding, the server), and the log's own "ready" line splits it.
Then each view is asked ``--repeats`` times on a held-out picture and the median is reported
beside the goal (2 s for reconstruct / tokens / understand and for retrieval over 500 images).
``--screenshot`` also opens the page in headless Chromium, picks an example, fills every view
and saves the whole page. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 2.0


def start(args, port: int, log_path: Path):
    cmd = [sys.executable, "-m", "openvision3.cli", "serve", "--model", args.model, "--port", str(port),
           "--gallery-size", str(args.gallery_size)]
    if args.generator:
        cmd += ["--generator", args.generator]
    t0 = time.perf_counter()
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    while proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    sys.exit(f"ov3 serve exited: {log_path.read_text()[-2000:]}")


def example_picture(resolution: int, out: Path) -> str:
    from torchvision.utils import save_image

    from openvision3.data import make_loader, open_data
    ds = open_data("shapes", split="test", resolution=resolution, train=False, infinite=False, kind="single")
    save_image((next(iter(make_loader(ds, batch_size=1)))["image"][0] + 1) / 2, out)
    return str(out)


def time_views(url: str, picture: str, repeats: int, generator: bool) -> dict:
    from gradio_client import Client, handle_file
    client = Client(url, verbose=False)
    calls = {
        "reconstruct": ("/reconstruct", lambda: (handle_file(picture), 0.0)),
        "tokens": ("/tokens", lambda: (handle_file(picture), 3, 3)),
        "similarity (a click)": ("/similarity", lambda: (handle_file(picture), 1, 1)),
        "understand": ("/understand", lambda: (handle_file(picture), "red circle, blue square, green triangle, "
                                                                      "yellow star, purple heart, pink ring")),
        "retrieve text -> image": ("/search_text", lambda: ("small red star left of large blue circle", "", 8)),
        "retrieve image -> text": ("/search_image", lambda: (handle_file(picture), "", 8)),
    }
    if generator:
        calls["generate (8 samples, 20 steps)"] = ("/generate", lambda: (0, 4.0, 20, 8, 0))
    out = {}
    for name, (api, inputs) in calls.items():
        client.predict(*inputs(), api_name=api)  # first call: lazy parts (LPIPS) and caches
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.predict(*inputs(), api_name=api)
            times.append(time.perf_counter() - t0)
        out[name] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
    return out


def screenshot(url: str, path: str) -> None:
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=120_000)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                    args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                                                          "--no-first-run", "--disable-background-networking",
                                                          "--disable-component-update", "--disable-sync"],
                                                    viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.goto(url)
        page.locator("#examples img").nth(4).click()  # a multi-object scene
        expect(page.locator("#recon-message")).to_contain_text("PSNR")
        expect(page.locator("#zs-probs")).to_contain_text("%")
        pca = page.locator("#tokens-pca img")
        box = pca.bounding_box()
        pca.click(position={"x": box["width"] * 0.4, "y": box["height"] * 0.4})
        expect(page.locator("#tokens-message")).to_contain_text("token (")
        page.locator("#query").get_by_role("textbox").press("Enter")
        expect(page.locator("#search-results img")).to_have_count(8)
        page.locator("#image-search-button").click()
        expect(page.locator("#caption-results")).to_contain_text("cosine")
        if page.locator("#gen-button").count():
            page.locator("#gen-button").click()
            expect(page.locator("#gen-message")).to_contain_text("samples of")
        time.sleep(1)  # let the last pictures paint
        page.screenshot(path=path, full_page=True)
        ctx.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/demo/model")
    p.add_argument("--generator", default=None)
    p.add_argument("--gallery-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--port", type=int, default=7877)
    p.add_argument("--screenshot", default=None, help="save the filled page here (PNG)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from openvision3.config import load_config_file
    resolution = load_config_file(Path(args.model) / "config.yaml").model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, startup = start(args, args.port, Path(tmp) / "serve.log")
        try:
            views = time_views(url, example_picture(resolution, Path(tmp) / "example.png"), args.repeats,
                               bool(args.generator))
            if args.screenshot:
                screenshot(url, args.screenshot)
        finally:
            proc.terminate()
            proc.wait()
        log = (Path(tmp) / "serve.log").read_text()
    ready = re.search(r"ready in ([\d.]+) s", log)
    gallery = re.search(r"(\d+) images, .* encoded in ([\d.]+) s", log)
    result = {"startup_s": round(startup, 2), "ready_line_s": float(ready.group(1)) if ready else None,
              "gallery_images": int(gallery.group(1)) if gallery else None,
              "gallery_encode_s": float(gallery.group(2)) if gallery else None, "views": views,
              "repeats": args.repeats, "threads": os.environ.get("OMP_NUM_THREADS", "default"),
              "cpus": os.cpu_count(), "model": args.model}
    print(f"start-up {result['startup_s']} s until the page answers (model + gallery ready after "
          f"{result['ready_line_s']} s; {result['gallery_images']} gallery images encoded once in "
          f"{result['gallery_encode_s']} s)")
    print(f"| view | median s | max s | goal {GOAL_S} s |\n|---|---:|---:|:---:|")
    for name, t in views.items():
        goal = "" if name.startswith("generate") else ("met" if t["median_s"] < GOAL_S else "missed")
        print(f"| {name} | {t['median_s']} | {t['max_s']} | {goal} |")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
