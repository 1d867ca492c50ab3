"""Make docs/console-overview.png, console-downloads.png and console-phone.png from a real running stack.

    .venv/bin/python docs/make_console_screenshots.py [--minutes 3]

A real origin on loopback, download worker, cache server and console (cachetap.testing.console);
objects are prefetched through the API and fetched from the cache server over a few minutes, so the
figures and charts are real ones. Needs Debian's chromium (./dev.sh test installs it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from cachetap.testing.console import console_stack, prefetch_and_wait

DOCS = Path(__file__).parent
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-sync", "--disable-dev-shm-usage"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=3, help="minutes over which clients fetch from the cache")
    minutes = parser.parse_args().minutes
    with tempfile.TemporaryDirectory() as tmp, console_stack(Path(tmp) / "cache") as stack:
        small, image = prefetch_and_wait(stack, "/small.iso"), prefetch_and_wait(stack, "/image.iso")
        with stack.client(token=True) as api:
            api.post("/api/prefetch", json={"url": stack.url("/broken.iso")})
            api.post("/api/prefetch", json={"url": stack.url("/gone.iso")})
        for minute in range(minutes):
            for entry, times in ((small, 3 + minute), (image, 1 + minute % 2)):
                for _ in range(times):
                    httpx.get(entry["cache_url"], timeout=60)
            if minute < minutes - 1:
                time.sleep(60)
        time.sleep(6)  # the cache server's hit flush
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="dark",
                                          device_scale_factor=1)
            context.add_init_script(f"localStorage.setItem('cachetap-admin-token', {stack.token!r})")
            page = context.new_page()
            page.goto(stack.console + "/overview")
            page.wait_for_selector("#chart-month canvas", timeout=30_000)
            time.sleep(2)
            page.screenshot(path=str(DOCS / "console-overview.png"), full_page=True)
            phone = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark",
                                        device_scale_factor=1, is_mobile=True, has_touch=True).new_page()
            phone.goto(stack.console + "/overview")
            phone.wait_for_selector("#chart-day canvas", timeout=30_000)
            time.sleep(2)
            phone.screenshot(path=str(DOCS / "console-phone.png"))
            page.goto(stack.console + "/downloads")
            page.fill("#prefetch-url", stack.url("/tool.bin"))
            page.click("#prefetch-form button")
            page.wait_for_function("() => [...document.querySelectorAll('#active progress')]"
                                   ".some(p => p.value > 25 && p.value < 90)", timeout=120_000)
            page.fill("#prefetch-url", "")
            page.screenshot(path=str(DOCS / "console-downloads.png"), full_page=True)
            browser.close()
    print("wrote", *(DOCS / f"console-{name}.png" for name in ("overview", "downloads", "phone")))


if __name__ == "__main__":
    main()
