"""Tiny inline-SVG charts for the owner's HTML report: no scripts, no external files.

Each helper takes plain numbers and labels and returns one `<svg>` element as text.
Every label goes through `esc` (report strings are partly provider-influenced), and
every number through `_f`, so nothing a report holds can become markup. The charts
are static: the page must render with the network off and with scripts disabled.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

#: Colours shared with the page's CSS.
INK = "#1f2933"
MUTED = "#8a96a3"
GRID = "#d9dee3"
BLUE = "#2f6fb3"
GREEN = "#2e8540"
RED = "#c0392b"
AMBER = "#d08c00"
BAND = "#cfe3d3"
BAND_CORE = "#9fcaa8"


def esc(value: object) -> str:
    """Text safe in element content and in quoted attributes."""
    return html.escape(str(value), quote=True)


def _f(value: float) -> str:
    """A coordinate: finite, short."""
    return f"{value:.2f}" if math.isfinite(value) else "0"


def fmt(value: float, digits: int = 4) -> str:
    """A number as a label: fixed for ordinary sizes, scientific beyond."""
    if not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.{digits}g}"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">'
        f"<title>{esc(title)}</title>" + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, label: str, *, anchor: str = "start", size: int = 12) -> str:
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" fill="{INK}" '
        f'text-anchor="{anchor}">{esc(label)}</text>'
    )


def bar_chart(
    bars: Sequence[tuple[str, float, str]],
    *,
    title: str,
    vmax: float | None = None,
    unit: str = "",
    width: int = 560,
) -> str:
    """Horizontal bars: (label, value, colour) each; values at or above 0."""
    top = vmax if vmax is not None else max((v for _, v, _ in bars), default=1.0)
    top = top if top > 0 and math.isfinite(top) else 1.0
    label_w, row_h, pad = 170, 28, 8
    plot_w = width - label_w - 90
    height = pad * 2 + row_h * max(len(bars), 1)
    body: list[str] = []
    for i, (label, value, colour) in enumerate(bars):
        y = pad + i * row_h
        w = max(0.0, min(value, top)) / top * plot_w
        body.append(_text(label_w - 8, y + 18, label, anchor="end"))
        body.append(
            f'<rect x="{label_w}" y="{_f(y + 5)}" width="{_f(w)}" height="{row_h - 10}" '
            f'fill="{esc(colour)}"/>'
        )
        body.append(_text(label_w + w + 6, y + 18, f"{fmt(value)}{unit}"))
    body.append(
        f'<line x1="{label_w}" y1="{pad}" x2="{label_w}" y2="{height - pad}" stroke="{INK}"/>'
    )
    return _svg(width, height, body, title)


def histogram(
    edges: Sequence[float],
    counts: Sequence[float],
    *,
    title: str,
    colour: str = BLUE,
    width: int = 300,
    height: int = 170,
) -> str:
    """Vertical bars over bins [edges[i], edges[i+1]); len(edges) == len(counts) + 1."""
    left, right, top, bottom = 36, 10, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = edges[0], edges[-1]
    span = hi - lo if hi > lo else 1.0
    peak = max(max(counts, default=0), 1)
    body = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="{INK}"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="{INK}"/>',
        _text(left - 4, top + 10, fmt(peak), anchor="end", size=10),
        _text(left - 4, top + plot_h, "0", anchor="end", size=10),
    ]
    for i, count in enumerate(counts):
        x0 = left + (edges[i] - lo) / span * plot_w
        x1 = left + (edges[i + 1] - lo) / span * plot_w
        h = max(count, 0) / peak * plot_h
        body.append(
            f'<rect x="{_f(x0 + 1)}" y="{_f(top + plot_h - h)}" width="{_f(max(x1 - x0 - 2, 1))}" '
            f'height="{_f(h)}" fill="{esc(colour)}"/>'
        )
    for value in (lo, (lo + hi) / 2, hi):
        x = left + (value - lo) / span * plot_w
        body.append(_text(x, top + plot_h + 14, fmt(value, 2), anchor="middle", size=10))
    body.append(_text(left + plot_w / 2, height - 3, "confidence", anchor="middle", size=10))
    return _svg(width, height, body, title)


def roc_curve(fpr: Sequence[float], tpr: Sequence[float], *, title: str, size: int = 280) -> str:
    """The ROC curve on [0, 1]^2 with the chance diagonal; points in the given order."""
    margin = 40
    plot = size - margin - 12

    def xy(x: float, y: float) -> str:
        return f"{_f(margin + x * plot)},{_f(12 + (1 - y) * plot)}"

    points = " ".join(
        xy(min(max(x, 0), 1), min(max(y, 0), 1)) for x, y in zip(fpr, tpr, strict=False)
    )
    body = [
        f'<rect x="{margin}" y="12" width="{plot}" height="{plot}" fill="none" stroke="{INK}"/>',
        f'<polyline points="{xy(0, 0)} {xy(1, 1)}" fill="none" stroke="{MUTED}" '
        'stroke-dasharray="4 4"/>',
        f'<polyline points="{points}" fill="none" stroke="{RED}" stroke-width="2"/>',
        _text(margin + plot / 2, size - 4, "false-positive rate", anchor="middle", size=11),
        f'<text x="12" y="{_f(12 + plot / 2)}" font-size="11" fill="{INK}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_f(12 + plot / 2)})">true-positive rate</text>',
        _text(margin, 12 + plot + 13, "0", anchor="middle", size=10),
        _text(margin + plot, 12 + plot + 13, "1", anchor="middle", size=10),
        _text(margin - 4, 16, "1", anchor="end", size=10),
    ]
    return _svg(size, size, body, title)


def _scale(value: float, scale: float) -> float:
    """asinh: linear near 0, logarithmic far out, defined for negative values."""
    return math.asinh(value / scale)


def range_strip(
    rows: Sequence[tuple[str, float]],
    *,
    honest: Sequence[float],
    threshold: float | None,
    tail: str,
    title: str,
    width: int = 640,
) -> str:
    """One line per tensor: its value (dot) against the honest corpus's range.

    The light band is the honest minimum..maximum, the darker band the 5th..95th
    percentile, the red line the policy's threshold; the axis is asinh-scaled so a
    z-score of 1 and one of 400 both fit. A dot past the threshold on the suspicious
    `tail` ("upper" or "lower") is drawn red.
    """
    finite = sorted(v for v in honest if math.isfinite(v))
    values = [v for _, v in rows] + finite + ([threshold] if threshold is not None else [])
    lo, hi = min(values, default=0.0), max(values, default=1.0)
    scale = max((hi - lo) / 200, 1e-6) if hi > lo else 1.0
    a, b = _scale(lo, scale), _scale(hi, scale)
    a, b = (a - 0.05 * (b - a), b + 0.05 * (b - a)) if b > a else (a - 1, b + 1)
    label_w, row_h, top = 190, 24, 8
    plot_w = width - label_w - 90
    height = top + row_h * max(len(rows), 1) + 30

    def x(value: float) -> float:
        return label_w + (_scale(value, scale) - a) / (b - a) * plot_w

    body: list[str] = []
    bottom = top + row_h * max(len(rows), 1)
    if finite:
        p5 = finite[int(0.05 * (len(finite) - 1))]
        p95 = finite[int(0.95 * (len(finite) - 1))]
        for low, high, colour in ((finite[0], finite[-1], BAND), (p5, p95, BAND_CORE)):
            body.append(
                f'<rect x="{_f(x(low))}" y="{top}" width="{_f(max(x(high) - x(low), 1))}" '
                f'height="{bottom - top}" fill="{colour}"/>'
            )
    if threshold is not None and math.isfinite(threshold):
        tx = x(threshold)
        body.append(
            f'<line x1="{_f(tx)}" y1="{top - 4}" x2="{_f(tx)}" y2="{bottom}" stroke="{RED}" '
            'stroke-width="2"/>'
        )
    for i, (label, value) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        bad = threshold is not None and (
            value > threshold if tail == "upper" else value < threshold
        )
        body.append(_text(label_w - 8, y + 4, label, anchor="end"))
        body.append(
            f'<circle cx="{_f(x(value))}" cy="{_f(y)}" r="5" fill="{RED if bad else BLUE}"/>'
        )
        body.append(_text(width - 80, y + 4, fmt(value)))
    for tick in sorted({lo, hi, 0.0, *([threshold] if threshold is not None else [])}):
        if lo <= tick <= hi:
            body.append(_text(x(tick), bottom + 14, fmt(tick, 3), anchor="middle", size=10))
    body.append(
        f'<line x1="{label_w}" y1="{bottom}" x2="{label_w + plot_w}" y2="{bottom}" '
        f'stroke="{INK}"/>'
    )
    return _svg(width, height, body, title)
