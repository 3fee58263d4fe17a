"""The owner's HTML report: content, escaping, robustness, the CLI command (no browser)."""

from __future__ import annotations

import copy
import json
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from sandbox.checks.calibrate import load_calibration
from sandbox.checks.weights import lowbit_patterned
from sandbox.cli import build_parser
from sandbox.client import commands
from sandbox.report_html import render_html, render_page
from tests.browser.dom import parse, visible
from tests.browser.reports import full_report, real_report

SECTIONS = [
    "Summary",
    "Job",
    "Accuracy of each model",
    "Weight checks",
    "Low-bit entropy per tensor",
    "Probe confidence",
    "Membership audit",
    "Differential privacy",
    "Egress gate",
    "Timings",
]


def test_real_report_shows_decision_accuracies_and_every_section() -> None:
    report = real_report()
    page = render_page(report, load_calibration())
    text = visible(page.html)
    assert "released_dp" in text
    assert "retrained the declared architecture" in text  # the plain-language summary
    for reason in report["reasons"]:
        assert " ".join(reason.split()) in text
    for key in ("candidate_accuracy", "sanitized_accuracy", "dp_accuracy"):
        assert f"{report['utility'][key] * 100:.4g}%" in text
    for title in SECTIONS:
        assert title in text
    assert "ε = 2.997" in text  # epsilon, 4 significant digits
    # probes and membership did not exist when this report was written
    assert text.count("not run under this policy") == 2
    assert page.missing == []


def test_lowbit_strips_mark_flagged_tensors_against_the_honest_range() -> None:
    report = real_report()
    page = render_html(report, load_calibration())
    patterned = next(c for c in report["checks"] if c["name"] == "lowbit_patterned")
    flagged = [n for n, v in patterned["details"]["per_tensor"].items() if v > 422.693687]
    assert flagged  # the LSB payload pushes tensors past the calibrated threshold
    strips = re.findall(r"<svg[^>]*aria-label=\"lowbit_\w+ per tensor[^\"]*\".*?</svg>", page)
    assert len(strips) == 3  # patterned, serial, uniform (pooled)
    # red dots for flagged tensors, and honest bands drawn from the corpus
    assert strips[0].count('fill="#c0392b"') == len(flagged)
    assert strips[0].count('fill="#cfe3d3"') == 1 and strips[0].count('fill="#9fcaa8"') == 1


def test_full_report_draws_histograms_roc_and_entropy() -> None:
    page = render_page(full_report(), load_calibration())
    dom = parse(page.html)
    text = visible(page.html)
    assert "not run under this policy" not in text
    assert dom.tags.count("svg") == 1 + 3 + 3 + 1 + 1  # accuracy, strips, hists, roc, timings
    assert "uniform_noise (n = 200)" in text and "shuffled_pixels" in text
    assert "probe_mean_confidence" in text and "flag" in text
    assert "AUC 0.62" in text and "TPR at 1% FPR 0.05" in text
    assert "low-bit entropy (bits per value, of 16)" in text
    assert page.missing == []
    roc = re.search(r'<polyline points="([^"]+)" fill="none" stroke="#c0392b"', page.html)
    assert roc is not None and len(roc.group(1).split()) == 101


def test_page_is_self_contained_and_forbids_scripts() -> None:
    page = render_html(full_report(), load_calibration())
    dom = parse(page)
    assert "script" not in dom.tags and "img" not in dom.tags and "link" not in dom.tags
    assert not [a for a, _ in dom.attrs if a in ("src", "href") or a.startswith("on")]
    # the only URL is the SVG namespace, which is a name, never fetched
    assert set(re.findall(r"https?://[^\"' )]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in page


HOSTILE = "<script>alert(1)</script>"


def hostile_report() -> dict[str, Any]:
    report = full_report()
    report["algorithm"]["name"] = HOSTILE
    report["reasons"].append('<img src=x onerror="alert(2)">')
    patterned = next(c for c in report["checks"] if c["name"] == "lowbit_patterned")
    patterned["details"]["per_tensor"] = {'"><script>alert(3)</script>': 1.0}
    report["probes"]["families"][0]["name"] = "</figcaption><script>alert(4)</script>"
    report["membership"]["explanation"] = "<b onmouseover=alert(5)>x</b>"
    report["timings"]["<svg onload=alert(6)>"] = 1.0
    return report


def test_provider_influenced_strings_are_text_never_markup() -> None:
    page = render_html(hostile_report(), load_calibration())
    dom = parse(page)
    assert "script" not in dom.tags and "img" not in dom.tags
    assert not [a for a, _ in dom.attrs if a.startswith("on")]
    text = visible(page)
    assert "<b onmouseover=alert(5)>x</b>" in text and "<svg onload=alert(6)>" in text
    assert HOSTILE in text
    assert '<img src=x onerror="alert(2)">' in text
    assert "</figcaption><script>alert(4)</script>" in text


MALFORMED: list[object] = [
    {},
    [],
    "not a report",
    None,
    {"decision": 5, "reasons": "x", "utility": [], "checks": {}, "timings": 3},
    {
        "decision": "released",
        "utility": {"candidate_accuracy": "high", "dp_accuracy": float("nan")},
        "checks": [1, None, {"name": "lowbit_patterned", "details": [], "statistic": "x"}],
        "timings": {"train": "slow", "gate": True},
        "probes": [],
        "membership": {"roc": {"fpr": [0, "x"], "tpr": [0, 1]}, "auc": "?"},
        "dp": {"epsilon": "inf"},
        "gate": "pass",
    },
    {
        "decision": "rejected",
        "probes": {"families": [{"confidence_histogram": {"edges": [0, 1], "counts": [1, 2]}}]},
        "membership": {"roc": {"fpr": [0.0, 1.0], "tpr": [0.0]}},
        "checks": [{"name": "lowbit_serial", "details": {"per_tensor": {"t": None}}}],
    },
]


@pytest.mark.parametrize("report", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_report_still_renders_and_says_what_is_missing(report: object) -> None:
    page = render_page(report, None)
    text = visible(page.html)
    assert "What this report lacks" in text
    assert page.missing and all(m in text for m in page.missing)
    for title in SECTIONS:
        assert title in text


def test_malformed_fields_are_named() -> None:
    page = render_page(MALFORMED[5], None)
    joined = " ".join(page.missing)
    assert "probes field is malformed" in joined
    assert "no valid ROC curve" in joined
    assert "no valid epsilon" in joined
    assert "honest-model calibration is unavailable" in joined


def test_absent_and_null_sections_read_not_run() -> None:
    report = copy.deepcopy(real_report())
    report["probes"] = None
    report.pop("membership", None)
    text = visible(render_html(report, load_calibration()))
    assert text.count("not run under this policy") == 2


def test_lowbit_entropy_per_tensor_is_in_the_check_details() -> None:
    """Fair-coin low bits give ~16 bits per value; a raw byte payload gives far less."""
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 0.1, 4096).astype(np.float32)
    payload = honest.view(np.uint32) & np.uint32(0xFFFF0000)
    payload |= rng.integers(0, 8, 4096, dtype=np.uint32)  # 3 random bits, 13 zero planes
    tensors = {"honest": honest, "payload": payload.view(np.float32)}
    details = lowbit_patterned(tensors).details
    entropy = details["entropy_bits"]
    assert set(entropy) == set(details["per_tensor"]) == {"honest", "payload"}
    assert 15.9 <= entropy["honest"] <= 16.0
    assert 2.9 <= entropy["payload"] <= 3.0


# --------------------------------------------------------------------------- the CLI


def test_cli_parses_report_html() -> None:
    args = build_parser().parse_args(["report", "job_1", "--html", "out.html", "--json"])
    assert (args.action, args.job, args.html, args.json) == (
        "report",
        "job_1",
        Path("out.html"),
        True,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "job_1"])  # --html is required


class _Client:
    def __init__(self, report_json: str) -> None:
        self.report_json = report_json
        self.asked: list[str] = []

    def report(self, job_id: str) -> SimpleNamespace:
        self.asked.append(job_id)
        return SimpleNamespace(report_json=self.report_json, attestation_json="", logs=b"")


def test_report_command_writes_an_owner_only_page(tmp_path: Path) -> None:
    client = _Client(json.dumps(real_report()))
    out = tmp_path / "job.html"
    result, text = commands.report_html(client, "job_1", out)  # type: ignore[arg-type]
    assert client.asked == ["job_1"]
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert result == {
        "job_id": "job_1",
        "html": str(out),
        "bytes": out.stat().st_size,
        "decision": "released_dp",
        "missing": [],
    }
    assert text == f"report {out} (decision: released_dp)"
    # a directory gets report.html inside it
    result, _ = commands.report_html(client, "job_1", tmp_path)  # type: ignore[arg-type]
    assert result["html"] == str(tmp_path / "report.html")


def test_report_command_survives_a_broken_report(tmp_path: Path) -> None:
    client = _Client("{not json")
    result, text = commands.report_html(client, "job_2", tmp_path / "r.html")  # type: ignore[arg-type]
    assert result["decision"] is None and result["missing"]
    assert "missing: The report is empty or not a JSON object" in text
    with pytest.raises(Exception, match="does not exist; create it first"):
        commands.report_html(client, "job_2", tmp_path / "no" / "r.html")  # type: ignore[arg-type]


def test_reference_models_are_shown_with_each_familys_divergence() -> None:
    report = copy.deepcopy(full_report())
    probes = report.setdefault("probes", {"families": [], "checks": []})
    probes["reference"] = True
    probes["reference_declared"] = {"epochs": 30, "batch_size": 64, "lr": 0.003}
    probes["reference_holdout_accuracy"] = [0.955, 0.961]
    probes["families"] = [
        {"name": "uniform", "n": 256, "statistics": {"divergence": 7.25, "agreement": 0.12}},
        {"name": "<script>x</script>", "n": 256, "statistics": {"divergence": 1.5}},
    ]
    page = render_page(report, load_calibration())
    text = visible(page.html)
    assert "Two reference models" in text and "0.955" in text and "lr 0.003" in text
    assert "7.25" in text and "0.12" in text
    assert "<script>x</script>" not in page.html  # escaped like every report string


def test_lowbit_strip_draws_the_honest_range_of_the_models_calibration_group() -> None:
    """A model is judged by its class group's thresholds, so its strip shows that
    group's honest range, not the pooled corpus's (which digits models dominate)."""
    calibration = load_calibration()
    report = real_report()
    patterned = next(c for c in report["checks"] if c["name"] == "lowbit_patterned")
    for group, models in (
        ("classes=2", calibration["groups"]["classes=2"]["models"]),
        ("all", calibration["corpus"]["models"]),
    ):
        patterned["details"]["calibration_group"] = group
        text = visible(render_html(report, calibration))
        assert f"honest range of {models} models, calibration group {group}" in text
