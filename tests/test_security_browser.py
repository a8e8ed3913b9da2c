"""Damage is shown in the page itself, in a real headless Chromium: a corrupt chunk and a broken run
are named in the banner and the runs table, and a checkpoint that fails its checksum gives an error
toast naming it (nothing is loaded). Skipped where Debian's chromium is absent, like
tests/test_inspector_browser.py."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_security_inspector import make_run

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # the corrupt chunk's warning, read by the app
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent"),
]
TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_damage_and_a_bad_checksum_are_shown_in_the_page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from inspector import launch
    runs = tmp_path / "runs"
    damaged = make_run(runs, "damaged", checkpoint=False)
    (damaged / "metrics.zarr" / "loss" / "c" / "0").write_bytes(b"garbage" * 8)
    broken = make_run(runs, "broken_cfg", checkpoint=False)
    (broken / "config.yaml").write_text("model: [unclosed\n")
    tampered = make_run(runs, "zz_tampered")  # sorts last: the Live tab's default run
    ckpt = next((tampered / "checkpoints").glob("ckpt-*.pth"))
    ckpt.with_name(ckpt.name + ".sha256").write_text("0" * 64 + f"  {ckpt.name}\n")
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(photo)

    demo, url = launch(runs, host="127.0.0.1", port=_free_port(), block=False, quiet=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            expect = sync_api.expect
            banner = page.locator("#inspector-empty")
            expect(banner).to_contain_text("metrics.zarr/loss", timeout=TIMEOUT_MS)
            expect(banner).to_contain_text("broken_cfg")
            table = page.locator("#runs-table")
            expect(table).to_contain_text("broken", timeout=TIMEOUT_MS)
            expect(table).to_contain_text("config.yaml")

            page.get_by_role("tab", name="Live masking").click()
            expect(page.locator("#live-ckpt input")).not_to_have_value("", timeout=TIMEOUT_MS)
            page.locator("#live-upload input[type=file]").set_input_files(str(photo))
            page.wait_for_timeout(500)
            page.locator("#live-go").click()
            toast = page.locator(".toast-body.error")
            expect(toast.first).to_contain_text("checksum", timeout=TIMEOUT_MS)
            expect(toast.first).to_contain_text(ckpt.name)
            page.screenshot(path=str(tmp_path / "security.png"), full_page=True)
            browser.close()
        assert demo.inspector_state.models.loads == 0
    finally:
        demo.close()
