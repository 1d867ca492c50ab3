"""The console in a real headless browser (Debian's chromium through Playwright's executable_path),
against the running stack of conftest.py: no console errors, the API's figures on the page, charts
that draw, a prefetch whose bar reaches 100 %, a purge that removes the row, and no cross-site action."""

from __future__ import annotations

import io
import shutil
import threading
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from cachetap.testing.console import MiB, prefetch_and_wait
from cachetap.testing.waiting import free_port, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--disable-dev-shm-usage"]
STABLE_FIELDS = [f"savings.{p}.{n}" for p in ("today", "week", "all")
                 for n in ("saved_bytes", "gross_bytes", "fetched_bytes", "missed_bytes", "byte_hit_ratio")]
STABLE_FIELDS += ["store.objects", "store.stored_bytes", "store.quota_bytes"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (./dev.sh test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A browser page on the console that records console errors and uncaught exceptions."""

    def __init__(self, browser, stack, token: bool = True, viewport=None):
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900},
                                           color_scheme="dark")
        if token:
            self.context.add_init_script(f"localStorage.setItem('cachetap-admin-token', {stack.token!r})")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.stack = stack

    def open(self, path: str):
        self.page.goto(self.stack.console + path)
        self.page.wait_for_selector("#updated:has-text('updated')", timeout=30_000)
        return self.page

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def served(stack):
    """An object fetched and served a few times, so the figures and charts are not all zero."""
    entry = prefetch_and_wait(stack, "/small.iso")
    for _ in range(2):
        assert httpx.get(entry["cache_url"], timeout=30).status_code == 200
    with stack.client() as api:
        wait_for(lambda: api.get(f"/api/entries/{entry['key']}").json()["served_bytes"] >= 4 * MiB,
                 "the cache server's hit flush", timeout=60, step=0.5)
    return entry


def _number(text: str) -> float | None:
    return float(text) if text else None  # "1" from JavaScript, "1.0" from Python: the same figure


def _page_figures(page) -> dict[str, str]:
    return page.eval_on_selector_all("[data-field]", "nodes => Object.fromEntries(nodes.map(n => [n.dataset.field, n.dataset.value]))")


def _api_figures(stack) -> dict[str, str]:
    with stack.client() as api:
        data = api.get("/api/overview").json()
    found = {}
    for field in STABLE_FIELDS:
        value = data
        for part in field.split("."):
            value = value[part]
        found[field] = "" if value is None else str(value)
    return found


def test_overview_shows_the_apis_figures_and_draws_charts_without_errors(browser, stack, served):
    view = Page(browser, stack)
    try:
        page = view.open("/overview")

        def agree():
            shown = _page_figures(page)
            return all(_number(shown[f]) == _number(v) for f, v in _api_figures(stack).items()) or None
        wait_for(agree, "the page's figures to equal the API's", timeout=20, step=0.5,
                 detail=lambda: f"page {_page_figures(page)}\napi {_api_figures(stack)}")
        assert _page_figures(page)["savings.all.gross_bytes"] not in ("", "0")
        text = page.inner_text("[data-field='savings.all.gross_bytes']")
        assert text.endswith("MiB"), text  # formatted for people, raw value in data-value
        page.wait_for_selector("#chart-day canvas", timeout=15_000)
        page.wait_for_selector("#chart-month canvas", timeout=15_000)
        for chart in ("#chart-day", "#chart-month"):
            assert _series_pixels(page.locator(f"{chart} canvas").screenshot()) > 0, f"{chart}: no served line drawn"
        assert view.errors == []
    finally:
        view.close()


def _series_pixels(png: bytes) -> int:
    """Pixels in the colour of the "served from cache" series (#5ad08a): the data line was drawn."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    data = image.tobytes()
    return sum(1 for i in range(0, len(data), 3)
               if abs(data[i] - 0x5A) < 24 and abs(data[i + 1] - 0xD0) < 24 and abs(data[i + 2] - 0x8A) < 24)


def test_prefetch_from_the_page_shows_a_progress_bar_reaching_100(browser, stack):
    view = Page(browser, stack)
    try:
        page = view.open("/downloads")
        url = stack.url("/tool.bin")
        page.fill("#prefetch-url", url)
        page.click("#prefetch-form button")
        page.wait_for_selector("#notice:has-text('admitted')", timeout=30_000)
        seen: list[float] = []

        def bar() -> float | None:
            row = page.locator("#active tr", has_text=url)
            if row.count() == 0:
                return None
            value = float(row.locator("progress").get_attribute("value"))
            seen.append(value)
            return value >= 100 or None
        wait_for(bar, "the progress bar to reach 100 %", timeout=180, step=0.2, detail=stack.log_tail)
        assert any(0 < v < 100 for v in seen), f"no progress between 0 and 100 was shown: {seen}"
        assert page.locator("#active tr", has_text=url).get_attribute("data-state") == "ready"
        assert view.errors == []
    finally:
        view.close()


def test_purge_from_the_catalog_page_removes_the_row(browser, stack):
    entry = prefetch_and_wait(stack, "/image.iso")
    view = Page(browser, stack)
    try:
        page = view.open("/catalog")
        page.fill("#search", "image.iso")
        row = page.locator(f"#entries tr[data-key='{entry['key']}']")
        row.wait_for(timeout=15_000)
        page.once("dialog", lambda dialog: dialog.accept())
        row.locator("button", has_text="Purge").click()
        row.wait_for(state="detached", timeout=15_000)
        with stack.client() as api:
            assert api.get(f"/api/entries/{entry['key']}").status_code == 404
        assert view.errors == []
    finally:
        view.close()


def test_without_the_token_the_page_cannot_act(browser, stack):
    view = Page(browser, stack, token=False)
    try:
        page = view.open("/catalog")
        page.fill("#prefetch-url", stack.url("/small-unknown.iso"))
        page.click("#prefetch-form button")
        page.wait_for_selector("#notice.error:has-text('admin token')", timeout=15_000)
        with stack.client() as api:
            assert api.get("/api/catalog", params={"q": "small-unknown"}).json()["entries"] == []
    finally:
        view.close()


ATTACK = """<!doctype html><html><body>
<form id="f" method="post" action="{console}/api/prefetch" enctype="text/plain">
<input name='{{"url":"{url}","x":"' value='"}}'></form>
<script>
fetch("{console}/api/prefetch", {{method: "POST", credentials: "include", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{url: "{url}"}})}})
  .finally(() => {{ fetch("{console}/api/entries/{key}/purge", {{method: "POST", credentials: "include", mode: "no-cors"}})
  .finally(() => {{ document.title = "sent"; document.getElementById("f").submit(); }}); }});
</script></body></html>"""


def test_a_page_from_another_origin_cannot_trigger_actions(browser, stack, served, tmp_path):
    """CSRF: the operator's browser holds the token (for the console's origin) and visits another
    site, whose page posts to the console by form and by fetch: nothing happens."""
    victim_url = stack.url("/csrf-target.iso")
    (tmp_path / "attack.html").write_text(ATTACK.format(console=stack.console, url=victim_url, key=served["key"]))
    port = free_port()
    handler = lambda *a, **kw: SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **kw)  # noqa: E731
    server = HTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    view = Page(browser, stack)  # the token sits in the console origin's storage
    try:
        view.open("/overview")
        page = view.page
        page.goto(f"http://127.0.0.1:{port}/attack.html")
        page.wait_for_url(f"{stack.console}/api/prefetch", timeout=15_000)  # the form went, and was answered
        assert "cross-origin request refused" in page.content() or "admin token" in page.content()
        with stack.client() as api:
            assert api.get("/api/catalog", params={"q": "csrf-target"}).json()["entries"] == []
            assert api.get(f"/api/entries/{served['key']}").status_code == 200  # not purged
    finally:
        view.close()
        server.shutdown()
        server.server_close()
