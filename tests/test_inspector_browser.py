"""Inspector in a real browser: Debian's headless Chromium driven by Playwright.

Starts the app in this process on a free port (server thread), opens each tab, moves the epoch
slider, runs live masking on a sampled image, and checks that images and plotly plots render and that
no error toast appears. Screenshots go to pytest's tmp_path (paths printed; run with -s to see them).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.test_inspector_support import TINY_EPOCHS, inspector_runs_root, shared_base

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),  # inside gradio's queue
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent (Debian's chromium package; the setup script installs it)"),
]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from inspector import launch
    runs = inspector_runs_root(shared_base(tmp_path_factory))
    demo, url = launch(runs, host="127.0.0.1", port=_free_port(), block=False, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def test_serves_no_files_outside_its_cache(app_url, tmp_path_factory):
    """Run files (configs, checkpoints) and system files are not downloadable by path."""
    import urllib.error
    import urllib.parse
    import urllib.request
    runs = inspector_runs_root(shared_base(tmp_path_factory))
    ckpt = sorted((runs / "tiny" / "checkpoints").glob("*.pth"))[-1]
    for target in ("/etc/passwd", str(runs / "tiny" / "config.yaml"), str(ckpt)):
        for route in ("gradio_api/file=", "file="):
            url = app_url.rstrip("/") + "/" + route + urllib.parse.quote(target)
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = r.read()
                    assert r.status >= 400 or target.encode() not in body and b"root:" not in body \
                        and b"run_dir" not in body, f"{url} served {target}"
            except urllib.error.HTTPError as e:
                assert e.code in (403, 404), f"{url}: unexpected HTTP {e.code}"


@pytest.fixture(scope="module")
def page(app_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        # nothing may leave the machine: fail any request that is not to the app itself
        outside: list[str] = []

        def guard(route):
            if route.request.url.startswith(app_url.rstrip("/")):
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        pg.route("**/*", guard)
        pg.goto(app_url, wait_until="domcontentloaded")
        pg.js_errors, pg.outside_requests = errors, outside
        yield pg
        browser.close()


def _shot(page, tmp_path, name) -> Path:
    path = tmp_path / f"inspector-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _no_error_toast(page):
    toasts = page.locator(".toast-body.error")
    assert toasts.count() == 0, f"error toast shown: {toasts.first.inner_text()}"


def _img_src(page, elem_id) -> str:
    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible", timeout=TIMEOUT_MS)
    src = img.get_attribute("src") or ""
    assert src, f"#{elem_id} image has no src"
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(),
                           timeout=TIMEOUT_MS)
    return src


def _plot_rendered(page, elem_id):
    svg = page.locator(f"#{elem_id} .js-plotly-plot svg.main-svg").first
    svg.wait_for(state="attached", timeout=TIMEOUT_MS)
    return page.locator(f"#{elem_id} .js-plotly-plot .scatterlayer .trace").count()


def test_every_tab_renders_in_chromium(page, tmp_path):
    from playwright.sync_api import expect

    # Runs: table with both runs, statuses from the stores
    table = page.locator("#runs-table")
    expect(table).to_contain_text("tiny", timeout=TIMEOUT_MS)
    expect(table).to_contain_text("crashed")
    expect(table).to_contain_text("finished")
    _shot(page, tmp_path, "runs")

    # Reconstructions: grid image, then move the epoch slider to the first epoch
    page.get_by_role("tab", name="Reconstructions").click()
    first_src = _img_src(page, "rec-grid")
    expect(page.locator("#rec-note")).to_contain_text(f"Epoch {TINY_EPOCHS}", timeout=TIMEOUT_MS)
    slider = page.locator("#rec-epoch input[type=range]")
    slider.focus()
    slider.press("Home")  # keyboard moves fire the slider's input event: the first logged epoch (0)
    expect(page.locator("#rec-note")).to_contain_text("Epoch 0 (", timeout=TIMEOUT_MS)
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel); return i && i.src && i.src !== old; }",
        arg=["#rec-grid img", first_src], timeout=TIMEOUT_MS)
    _img_src(page, "rec-grid")
    expect(page.locator("#rec-loss")).to_contain_text("loss")
    number = page.locator("#rec-epoch input[type=number]")  # typing an epoch works too (release)
    number.fill("1")
    number.press("Tab")
    expect(page.locator("#rec-note")).to_contain_text("Epoch 1 (", timeout=TIMEOUT_MS)
    _shot(page, tmp_path, "reconstructions")
    _no_error_toast(page)

    # Live masking: a sampled image of the run, the latest checkpoint, 60% grid masking
    page.get_by_role("tab", name="Live masking").click()
    expect(page.locator("#live-ckpt input")).not_to_have_value("", timeout=TIMEOUT_MS)
    expect(page.locator("#live-sample input")).not_to_have_value("", timeout=TIMEOUT_MS)
    page.locator("#live-sampler").get_by_label("grid").check()
    page.locator("#live-go").click()
    for key in ("original", "masked", "reconstruction", "pasted"):
        _img_src(page, f"live-{key}")
    expect(page.locator("#live-note")).to_contain_text("encoder saw 16/64 patches", timeout=TIMEOUT_MS)
    _shot(page, tmp_path, "live")
    _no_error_toast(page)

    # Curves: plotly renders loss, lr, evals and throughput
    page.get_by_role("tab", name="Curves").click()
    for key in ("loss", "lr", "evals", "throughput"):
        assert _plot_rendered(page, f"plot-{key}") >= 1, f"{key} plot has no trace"
    with page.expect_download(timeout=TIMEOUT_MS) as dl:  # CSV export of a curve's data
        page.locator("#csv-loss").click()
    csv_path = tmp_path / "loss.csv"
    dl.value.save_as(csv_path)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "series,x,y" and len(lines) > 2 and lines[1].startswith("tiny,")
    _shot(page, tmp_path, "curves")

    # Scaling: with the paper's reference points
    page.get_by_role("tab", name="Scaling").click()
    n_before = _plot_rendered(page, "plot-sc-params")
    page.locator("#sc-ref input[type=checkbox]").check()
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length > n",
        arg=["#plot-sc-params .js-plotly-plot .scatterlayer .trace", n_before], timeout=TIMEOUT_MS)
    expect(page.locator("#plot-sc-params")).to_contain_text("ViT-H/14", timeout=TIMEOUT_MS)
    _shot(page, tmp_path, "scaling")
    _no_error_toast(page)

    assert not page.js_errors, f"JavaScript errors: {page.js_errors}"
    assert not page.outside_requests, f"the page tried to reach outside the app: {page.outside_requests}"
