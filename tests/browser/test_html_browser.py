"""The owner's HTML report in a real browser: Debian's headless Chromium.

Renders the report with every section, takes a screenshot and checks, from its
pixels, that the charts were drawn (their colours are there, the page is not
blank); dumps the DOM after load and checks the visible text. The hostile report
checks that provider-influenced strings stay text and no script runs. Chromium runs
with no network (every host resolves to nothing), as an owner opening the file
offline would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sandbox.checks.calibrate import load_calibration
from sandbox.report_html import render_html
from tests.browser.dom import parse, visible
from tests.browser.png import read_png
from tests.browser.reports import full_report

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1000, 4200


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    missing = "no chromium on PATH: apt-get install -y chromium (scripts/test.sh does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {missing}")
    pytest.skip(missing)


def browse(page: Path, tmp_path: Path, *extra: str) -> str:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WIDTH},{HEIGHT}",
        *extra,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def colour_pixels(pixels: np.ndarray, hex_colour: str) -> int:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return int(np.all(pixels[..., :3] == rgb, axis=-1).sum())


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    report = full_report()
    page = tmp_path / "report.html"
    page.write_text(render_html(report, load_calibration()))
    shot = tmp_path / "shot.png"
    browse(page, tmp_path, f"--screenshot={shot}")
    pixels = read_png(shot)
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    grey = pixels[..., :3].astype(np.float64).mean(axis=-1)
    assert grey.std() > 15  # not a blank page
    paper = (colour_pixels(pixels, "#f5f7f9") + colour_pixels(pixels, "#ffffff")) / grey.size
    assert 0.5 <= paper <= 0.97  # background and white sections, with content on them
    assert colour_pixels(pixels, "#6c4ab6") > 500  # the released_dp badge
    assert colour_pixels(pixels, "#2f6fb3") > 5000  # accuracy, histogram and timing bars
    assert colour_pixels(pixels, "#d08c00") > 1000  # the DP model's accuracy bar
    assert colour_pixels(pixels, "#9fcaa8") > 2000  # honest-range bands of the low-bit strips
    assert colour_pixels(pixels, "#2e8540") > 1000  # sanitized bar, holdout histogram

    text = visible(browse(page, tmp_path, "--dump-dom"))
    assert "released_dp" in text and "retrained the declared architecture" in text
    for key in ("candidate_accuracy", "sanitized_accuracy", "dp_accuracy"):
        assert f"{report['utility'][key] * 100:.4g}%" in text
    for title in (
        "Summary",
        "Accuracy of each model",
        "Low-bit entropy per tensor",
        "Probe confidence",
        "Membership audit",
        "Differential privacy",
        "Egress gate",
        "Timings",
    ):
        assert title in text
    assert "AUC 0.62" in text and "uniform_noise (n = 200)" in text
    assert "not run under this policy" not in text


def test_hostile_strings_stay_text_and_no_script_runs(tmp_path: Path) -> None:
    report = full_report()
    report["algorithm"]["name"] = "<script>document.title='PWNED'</script>"
    report["reasons"].append("<img src=x onerror=\"document.title='PWNED'\">")
    report["probes"]["families"][0]["name"] = "<svg onload=\"document.title='PWNED'\">"
    page = tmp_path / "report.html"
    page.write_text(render_html(report, load_calibration()))
    dom_text = browse(page, tmp_path, "--dump-dom")
    dom = parse(dom_text)
    assert "script" not in dom.tags and "img" not in dom.tags
    assert not [name for name, _ in dom.attrs if name.startswith("on")]
    title = dom_text.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title == f"sandbox job report {report['job_id']}"  # no script rewrote it
    text = visible(dom_text)
    assert "<script>document.title='PWNED'</script>" in text
    assert "<img src=x onerror=\"document.title='PWNED'\">" in text
