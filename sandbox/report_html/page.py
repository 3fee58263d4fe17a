"""The data owner's report as one self-contained HTML page (issue 8, item 6).

`render_page` turns report.json (and the shipped honest-model calibration) into a
page with a plain-language summary, the accuracy of each model, the low-bit entropy
of each tensor against the honest range, probe confidence histograms, the
membership ROC, the DP guarantee, the gate verdict and the step timings.

Why it is built the way it is:
- Self-contained: inline CSS and inline SVG only, so the page opens from a file,
  offline, years later, and a Content-Security-Policy forbids scripts and every
  fetch (defence in depth behind the escaping).
- Escaped: report strings are partly provider-influenced (the algorithm's name,
  explanations quoting tensor names), so every string passes `html.escape`.
- Defensive: any field may be missing or malformed (an old report, a failed job, a
  hand-edited file). A section that cannot be drawn says what is missing; the page
  always renders, and `RenderedPage.missing` lists what it could not show.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.report_html import svg
from sandbox.report_html.svg import esc, fmt

#: The checks whose per-tensor figures are low-bit statistics.
LOWBIT_CHECKS = ("lowbit_patterned", "lowbit_serial", "lowbit_uniform")

SUMMARIES = {
    "released": "The provider's model was released as trained: no enabled check flagged it "
    "and it met the policy's accuracy floor.",
    "released_sanitized": "A sanitized copy of the provider's model was released: the low "
    "mantissa bits of every weight were replaced by fresh random bits, so anything hidden "
    "in them is gone.",
    "released_dp": "The provider's model was not released. The platform retrained the "
    "declared architecture on your data with differential privacy (DP-SGD) and released "
    "that model instead; the provider's weights were discarded.",
    "rejected": "No model was released: nothing trained on your data left the sandbox.",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;
background:#f5f7f9;margin:0}
main{max-width:960px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:0 0 10px}
h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border:1px solid #d9dee3;border-radius:6px;padding:16px 20px;
margin:16px 0}
.meta{color:#52606d;font-size:13px}.muted{color:#8a96a3}
.badge{display:inline-block;padding:4px 12px;border-radius:14px;font-weight:600;color:#fff}
.released{background:#2e8540}.released_sanitized{background:#2f6fb3}
.released_dp{background:#6c4ab6}.rejected{background:#c0392b}.unknown{background:#8a96a3}
.pass{color:#2e8540;font-weight:600}.flag,.fail{color:#c0392b;font-weight:600}
.applied{color:#2f6fb3;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e4e7eb;vertical-align:top}
th{background:#f0f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.missing{background:#fff8e1;border-color:#d08c00}
code{font-size:12px;word-break:break-all}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass
class RenderedPage:
    html: str
    #: What the page could not show, in the owner's words (empty for a full report).
    missing: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- defensive access


def _num(value: object) -> float | None:
    """A finite number, or None (bools, strings, NaN and infinities are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: object) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else []


def _nums(value: object) -> list[float] | None:
    """A list of finite numbers, or None if any entry is not one."""
    items = _seq(value)
    numbers = [_num(v) for v in items]
    if not items or any(n is None for n in numbers):
        return None
    return [n for n in numbers if n is not None]


def _cell(value: object) -> str:
    number = _num(value)
    if number is not None:
        return fmt(number)
    if value is None:
        return "—"
    return esc(value)


def _verdict(value: object) -> str:
    word = str(value) if isinstance(value, str) else "unknown"
    css = word if word in ("pass", "flag", "fail", "applied") else "muted"
    return f'<span class="{css}">{esc(word)}</span>'


class _Page:
    """Collects sections and the list of what is missing."""

    def __init__(self, report: Mapping[str, Any], calibration: Mapping[str, Any] | None):
        self.report = report
        self.calibration = _map(calibration)
        self.missing: list[str] = []
        self.sections: list[str] = []

    def lack(self, what: str) -> str:
        self.missing.append(what)
        return f'<p class="muted">{esc(what)}</p>'

    def section(self, title: str, anchor: str, build: Callable[[], str]) -> None:
        try:
            body = build()
        except Exception as error:  # a malformed field must never cost the whole page
            body = self.lack(f"{title}: this section could not be drawn ({type(error).__name__})")
        self.sections.append(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>')


# --------------------------------------------------------------------- sections


def _summary(page: _Page) -> str:
    report = page.report
    decision = report.get("decision")
    known = isinstance(decision, str) and decision in SUMMARIES
    parts = []
    if known:
        parts.append(f'<p><span class="badge {esc(decision)}">{esc(decision)}</span></p>')
        parts.append(f"<p>{esc(SUMMARIES[str(decision)])}</p>")
    else:
        parts.append('<p><span class="badge unknown">unknown</span></p>')
        parts.append(page.lack("The report does not say what was decided (no valid decision)."))
    reasons = [r for r in _seq(report.get("reasons")) if isinstance(r, str)]
    if reasons:
        parts.append("<h3>Why</h3><ul>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>")
    else:
        parts.append(page.lack("The report gives no reasons for the decision."))
    facts = []
    utility = _map(report.get("utility"))
    released = _num(utility.get("released_accuracy"))
    if released is not None:
        facts.append(f"released model's holdout accuracy: <b>{released:.2%}</b>")
    checks = [_map(c) for c in _seq(report.get("checks"))]
    judged = [c for c in checks if c.get("verdict") in ("pass", "flag")]
    if judged:
        flagged = sum(1 for c in judged if c.get("verdict") == "flag")
        facts.append(f"weight checks flagged: <b>{flagged}</b> of {len(judged)}")
    dp = _map(report.get("dp"))
    epsilon, delta = _num(dp.get("epsilon")), _num(dp.get("delta"))
    if epsilon is not None:
        facts.append(f"DP guarantee: <b>ε = {fmt(epsilon)}</b>, δ = {_cell(delta)}")
    if facts:
        parts.append("<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>")
    return "".join(parts)


def _identity(page: _Page) -> str:
    report = page.report
    algorithm, policy = _map(report.get("algorithm")), _map(report.get("policy"))
    dataset, model = _map(report.get("dataset")), _map(report.get("model"))
    rows = [
        ("job", report.get("job_id")),
        ("policy", f"{policy.get('name', '?')} (sha256 {policy.get('sha256', '?')})"),
        (
            "algorithm",
            f"{algorithm.get('name', '?')} {algorithm.get('version', '')} "
            f"(sha256 {algorithm.get('sha256', '?')})",
        ),
        (
            "dataset",
            f"{dataset.get('n_train', '?')} training records, "
            f"{dataset.get('n_holdout', '?')} holdout ({dataset.get('holdout', '?')})",
        ),
        ("released model", f"sha256 {model.get('sha256')}" if model else "none"),
    ]
    return (
        "<table>"
        + "".join(f"<tr><th>{esc(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
        + ("</table>")
    )


def _accuracy(page: _Page) -> str:
    utility = _map(page.report.get("utility"))
    bars = []
    for key, label, colour in (
        ("candidate_accuracy", "candidate (provider's)", svg.BLUE),
        ("sanitized_accuracy", "sanitized", svg.GREEN),
        ("dp_accuracy", "DP-retrained", svg.AMBER),
    ):
        value = _num(utility.get(key))
        if value is not None:
            bars.append((label, value * 100, colour))
    if not bars:
        return page.lack("No accuracy was measured (the job stopped before the utility step).")
    chart = svg.bar_chart(bars, title="holdout accuracy by model", vmax=100, unit="%")
    n = _num(utility.get("holdout_n"))
    note = f"<p class='meta'>on {int(n)} holdout records the provider never saw.</p>" if n else ""
    return chart + note


def _checks_table(page: _Page) -> str:
    checks = [_map(c) for c in _seq(page.report.get("checks"))]
    if not checks:
        return page.lack("No weight checks ran (the job stopped before them, or none are enabled).")
    rows = "".join(
        f"<tr><td>{esc(c.get('name', '?'))}</td><td>{_verdict(c.get('verdict'))}</td>"
        f"<td class='num'>{_cell(c.get('statistic'))}</td>"
        f"<td class='num'>{_cell(c.get('threshold'))}</td><td>{_cell(c.get('tail'))}</td>"
        f"<td>{_cell(c.get('explanation'))}</td></tr>"
        for c in checks
    )
    return (
        "<table><tr><th>check</th><th>verdict</th><th>statistic</th><th>threshold</th>"
        f"<th>tail</th><th>explanation</th></tr>{rows}</table>"
    )


def _lowbits(page: _Page) -> str:
    checks = {str(c.get("name")): c for c in map(_map, _seq(page.report.get("checks")))}
    honest_checks = _map(page.calibration.get("checks"))
    parts = [
        "<p>Each dot is one tensor's statistic; the light green band is the range over "
        "the honest-model corpus, the darker band its 5th–95th percentile, the red line "
        "the policy's threshold. A payload in the low mantissa bits pushes a tensor out of "
        "the honest range.</p>"
    ]
    if not honest_checks:
        parts.append(page.lack("The honest-model calibration is unavailable: no honest range."))
    drawn = 0
    for name in LOWBIT_CHECKS:
        entry = _map(checks.get(name))
        if not entry:
            continue
        details = _map(entry.get("details"))
        rows = [(str(k), v) for k, v in _map(details.get("per_tensor")).items()]
        values = [(k, n) for k, v in rows if (n := _num(v)) is not None]
        if not values and _num(entry.get("statistic")) is not None:
            values = [("all F32 tensors (pooled)", float(entry["statistic"]))]
        if not values:
            continue
        group = str(details.get("calibration_group") or "all")
        group_checks = _map(_map(_map(page.calibration.get("groups")).get(group)).get("checks"))
        cal = _map(group_checks.get(name)) or _map(honest_checks.get(name))
        honest = _nums(cal.get("honest")) or []
        judged_by = group if name in group_checks else "all"
        tail = str(entry.get("tail") or cal.get("tail") or "upper")
        parts.append(
            f"<h3>{esc(name)} <span class='muted'>({esc(tail)} tail; honest range of "
            f"{len(honest)} models, calibration group {esc(judged_by)})</span></h3>"
        )
        parts.append(
            svg.range_strip(
                values,
                honest=honest,
                threshold=_num(entry.get("threshold")),
                tail=tail,
                title=f"{name} per tensor against the honest range",
            )
        )
        drawn += 1
        entropy = _map(details.get("entropy_bits"))
        if entropy:
            bits = _num(details.get("analysed_bits")) or 16
            parts.append(
                f"<table><tr><th>tensor</th><th>low-bit entropy (bits per value, of {int(bits)})"
                "</th></tr>"
                + "".join(
                    f"<tr><td>{esc(k)}</td><td class='num'>{_cell(v)}</td></tr>"
                    for k, v in entropy.items()
                )
                + "</table><p class='meta'>Fair coins give the maximum; a raw payload's "
                "biased bit planes give less.</p>"
            )
    if not drawn:
        parts.append(page.lack("No low-bit check results with per-tensor figures."))
    return "".join(parts)


def _histogram_of(value: object, title: str, colour: str) -> str | None:
    hist = _map(value)
    edges, counts = _nums(hist.get("edges")), _nums(hist.get("counts"))
    if edges is None or counts is None or len(edges) != len(counts) + 1:
        return None
    return svg.histogram(edges, counts, title=title, colour=colour)


def _references(probes: Mapping[str, Any]) -> str:
    """The platform's reference models: their recipe, accuracy, and the candidate's
    divergence from them per family."""
    declared = _map(probes.get("reference_declared"))
    recipe = ", ".join(f"{esc(str(k))} {_cell(v)}" for k, v in declared.items()) or "defaults"
    accuracy = ", ".join(_cell(a) for a in _seq(probes.get("reference_holdout_accuracy")))
    rows = "".join(
        f"<tr><td>{esc(str(_map(f).get('name', '?')))}</td>"
        f"<td class='num'>{_cell(_map(_map(f).get('statistics')).get('divergence'))}</td>"
        f"<td class='num'>{_cell(_map(_map(f).get('statistics')).get('agreement'))}</td></tr>"
        for f in _seq(probes.get("families"))
    )
    return (
        "<p class='meta'>Two reference models of the same graph, trained by the platform on "
        f"the same split (declared recipe: {recipe}; holdout accuracy {accuracy or '?'}). "
        "Divergence: how much further the model's answers are from theirs on a family than "
        "on the holdout, in units of the references' distance from each other.</p>"
        "<table><tr><th>family</th><th>divergence</th><th>agreement</th></tr>"
        f"{rows}</table>"
    )


def _probes(page: _Page) -> str:
    probes = page.report.get("probes")
    if probes is None:
        return "<p class='muted'>not run under this policy</p>"
    probes = _map(probes)
    if not probes:
        return page.lack("Probes: the report's probes field is malformed.")
    charts = []
    holdout = _histogram_of(
        probes.get("holdout_confidence_histogram"), "holdout records", svg.GREEN
    )
    if holdout:
        charts.append(
            f"<figure><figcaption>holdout (honest reference)</figcaption>{holdout}</figure>"
        )
    for family in map(_map, _seq(probes.get("families"))):
        name = str(family.get("name", "?"))
        chart = _histogram_of(family.get("confidence_histogram"), name, svg.BLUE)
        caption = f"{name} (n = {_cell(family.get('n'))})"
        if chart is None:
            chart = page.lack(f"Probes: family {name} has no valid histogram.")
        charts.append(f"<figure><figcaption>{esc(caption)}</figcaption>{chart}</figure>")
    parts = [
        f"<p class='meta'>{_cell(probes.get('queries_per_family'))} queries per family; "
        f"{_cell(probes.get('seconds'))} s. Confidence is the model's top-class probability: a "
        "model trained to answer secret queries is over-confident on them.</p>",
        "<div class='charts'>" + "".join(charts) + "</div>",
    ]
    if probes.get("reference") is True:
        parts.append(_references(probes))
    checks = [_map(c) for c in _seq(probes.get("checks"))]
    if checks:
        parts.append(
            "<table><tr><th>probe check</th><th>verdict</th><th>threshold</th>"
            "<th>explanation</th></tr>"
            + "".join(
                f"<tr><td>{esc(c.get('name', '?'))}</td><td>{_verdict(c.get('verdict'))}</td>"
                f"<td class='num'>{_cell(c.get('threshold'))}</td>"
                f"<td>{_cell(c.get('explanation'))}</td></tr>"
                for c in checks
            )
            + "</table>"
        )
    return "".join(parts)


def _membership(page: _Page) -> str:
    membership = page.report.get("membership")
    if membership is None:
        return "<p class='muted'>not run under this policy</p>"
    membership = _map(membership)
    if not membership:
        return page.lack("Membership audit: the report's membership field is malformed.")
    roc = _map(membership.get("roc"))
    fpr, tpr = _nums(roc.get("fpr")), _nums(roc.get("tpr"))
    if fpr is None or tpr is None or len(fpr) != len(tpr):
        chart = page.lack("Membership audit: no valid ROC curve.")
    else:
        chart = svg.roc_curve(fpr, tpr, title="membership inference ROC on the canaries")
    rows = [
        ("verdict", _verdict(membership.get("verdict"))),
        ("AUC", _cell(membership.get("auc"))),
        ("TPR at 1% FPR", _cell(membership.get("tpr_at_1pct_fpr"))),
        (
            "ε lower bound",
            f"{_cell(membership.get('epsilon_lower_bound'))} "
            f"(confidence {_cell(membership.get('confidence'))})",
        ),
        (
            "canaries (included)",
            f"{_cell(membership.get('canaries'))} " f"({_cell(membership.get('included'))})",
        ),
        ("score", _cell(membership.get("score"))),
        ("threshold", _cell(membership.get("threshold"))),
        ("explanation", _cell(membership.get("explanation"))),
    ]
    table = "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return (
        "<p>Canaries were planted in the training data; the curve shows how well the released "
        "model tells them from canaries it never saw (the diagonal is chance).</p>"
        f"<div class='charts'>{chart}{table}</table></div>"
    )


def _dp(page: _Page) -> str:
    dp = page.report.get("dp")
    if dp is None:
        return "<p class='muted'>No DP retraining ran for this job.</p>"
    dp = _map(dp)
    if _num(dp.get("epsilon")) is None:
        return page.lack("DP: the report's dp field has no valid epsilon.")
    keys = (
        "epsilon",
        "delta",
        "epsilon_target",
        "accountant",
        "noise_multiplier",
        "clip",
        "epochs",
        "steps",
        "sample_rate",
        "device",
    )
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{_cell(dp.get(k))}</td></tr>" for k in keys if k in dp
    )
    notes = [n for n in _seq(dp.get("notes")) if isinstance(n, str)]
    return (
        "<p>The released DP model satisfies (ε, δ)-differential privacy with respect to "
        "each training record.</p>"
        f"<table>{rows}</table>"
        + ("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else "")
    )


def _gate(page: _Page) -> str:
    gate = _map(page.report.get("gate"))
    if not gate:
        return page.lack("Egress gate: no verdict (the job stopped before the gate).")
    notes = [n for n in _seq(gate.get("notes")) if isinstance(n, str)]
    reason = gate.get("reason")
    return (
        f"<p>verdict: {_verdict(gate.get('verdict'))}</p>"
        + (f"<p>{esc(reason)}</p>" if isinstance(reason, str) else "")
        + ("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else "")
    )


def _timings(page: _Page) -> str:
    timings = _map(page.report.get("timings"))
    bars = [(str(k), n, svg.BLUE) for k, v in timings.items() if (n := _num(v)) is not None]
    if not bars:
        return page.lack("No step timings were recorded.")
    total = sum(v for _, v, _ in bars)
    return svg.bar_chart(bars, title="seconds per step", unit=" s") + (
        f"<p class='meta'>total {fmt(total)} s (a fixed release time, if the policy sets one, "
        "adds a hold that is not a step).</p>"
    )


# --------------------------------------------------------------------- the page


def render_page(
    report: Mapping[str, Any] | object, calibration: Mapping[str, Any] | None = None
) -> RenderedPage:
    """The whole page and what it could not show; never raises on a bad report."""
    data = report if isinstance(report, Mapping) else {}
    page = _Page(data, calibration)
    if not data:
        page.lack("The report is empty or not a JSON object: nothing can be shown.")
    page.section("Summary", "summary", lambda: _summary(page))
    page.section("Job", "job", lambda: _identity(page))
    page.section("Accuracy of each model", "accuracy", lambda: _accuracy(page))
    page.section("Weight checks", "checks", lambda: _checks_table(page))
    page.section("Low-bit entropy per tensor", "lowbits", lambda: _lowbits(page))
    page.section("Probe confidence", "probes", lambda: _probes(page))
    page.section("Membership audit", "membership", lambda: _membership(page))
    page.section("Differential privacy", "dp", lambda: _dp(page))
    page.section("Egress gate", "gate", lambda: _gate(page))
    page.section("Timings", "timings", lambda: _timings(page))
    lacking = ""
    if page.missing:
        lacking = (
            '<section class="missing" id="missing"><h2>What this report lacks</h2><ul>'
            + "".join(f"<li>{esc(m)}</li>" for m in page.missing)
            + "</ul></section>"
        )
    job = data.get("job_id")
    title = f"sandbox job report {job}" if isinstance(job, str) else "sandbox job report"
    document = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><p class='meta'>For the data owner only: it describes your "
        "dataset's job. Generated from report.json.</p>"
        + page.sections[0]
        + lacking
        + "".join(page.sections[1:])
        + "</main></body></html>\n"
    )
    return RenderedPage(document, page.missing)


def render_html(
    report: Mapping[str, Any] | object, calibration: Mapping[str, Any] | None = None
) -> str:
    """The page as text (see `render_page` for the list of what is missing)."""
    return render_page(report, calibration).html
