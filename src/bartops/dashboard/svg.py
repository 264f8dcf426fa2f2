"""Small inline-SVG plots for the dashboard (no plotting library, no external assets).

Every function returns a self-contained ``<svg>`` string; text is escaped, numbers are checked to be
finite, and an empty input gives a short "no data" drawing rather than an error.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

W, H = 360, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 40


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) < 0.01:
        return f"{v:.0e}"
    return f"{v:.3g}"


def _frame(title: str, body: list[str], xlabel: str, ylabel: str) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {W} {H}" width="{W}" height="{H}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
        'fill="#fafafa" stroke="#bbb"/>',
        *body,
        f'<text x="{(LEFT + W - RIGHT) / 2:.1f}" y="{H - 6}" text-anchor="middle" font-size="11">{escape(xlabel)}</text>',
        f'<text x="12" y="{(TOP + H - BOTTOM) / 2:.1f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {(TOP + H - BOTTOM) / 2:.1f})">{escape(ylabel)}</text>',
        "</svg>",
    ])


def _empty(title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot empty" role="img" aria-label="{escape(title)}" '
            f'viewBox="0 0 {W} 60" width="{W}" height="60"><title>{escape(title)}</title>'
            '<text x="10" y="34" font-size="12" fill="#777">no data</text></svg>')


def _axes(x0: float, x1: float, y0: float, y1: float, ticks: int = 5, log_x: bool = False):
    """Scale functions data → pixels and tick labels for a rectangle of data space."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    dx = (x1 - x0) or 1.0
    dy = (y1 - y0) or 1.0

    def sx(x: float) -> float:
        return LEFT + (x - x0) / dx * pw

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / dy * ph

    body = []
    for i in range(ticks + 1):
        xv = x0 + dx * i / ticks
        yv = y0 + dy * i / ticks
        xl = _tick(10 ** xv) if log_x else _tick(xv)
        body.append(f'<line x1="{_fmt(sx(xv))}" y1="{H - BOTTOM}" x2="{_fmt(sx(xv))}" y2="{H - BOTTOM + 4}" stroke="#555"/>')
        body.append(f'<text x="{_fmt(sx(xv))}" y="{H - BOTTOM + 15}" text-anchor="middle" font-size="9">{xl}</text>')
        body.append(f'<line x1="{LEFT - 4}" y1="{_fmt(sy(yv))}" x2="{LEFT}" y2="{_fmt(sy(yv))}" stroke="#555"/>')
        body.append(f'<text x="{LEFT - 6}" y="{_fmt(sy(yv) + 3)}" text-anchor="end" font-size="9">{_tick(yv)}</text>')
    return sx, sy, body


def reliability_svg(points: Sequence[dict], title: str = "Calibration (reliability diagram)") -> str:
    """Reliability diagram: mean predicted vs observed stream rate per bin, dot area ∝ count.

    ``points`` are dicts with ``predicted``, ``observed`` and optionally ``count``.
    """
    pts = [p for p in points if _finite(p.get("predicted")) and _finite(p.get("observed"))]
    if not pts:
        return _empty(title)
    hi = max(max(p["predicted"] for p in pts), max(p["observed"] for p in pts))
    top = min(1.0, _nice_ceiling(hi * 1.05)) if hi > 0 else 1.0
    sx, sy, body = _axes(0.0, top, 0.0, top)
    body.append(f'<line class="diagonal" x1="{_fmt(sx(0))}" y1="{_fmt(sy(0))}" x2="{_fmt(sx(top))}" '
                f'y2="{_fmt(sy(top))}" stroke="#999" stroke-dasharray="4 3"/>')
    counts = [float(p.get("count") or 0) for p in pts]
    cmax = max(counts) if any(counts) else 0.0
    path = " ".join(f"{'M' if i == 0 else 'L'}{_fmt(sx(p['predicted']))},{_fmt(sy(p['observed']))}"
                    for i, p in enumerate(pts))
    body.append(f'<path d="{path}" fill="none" stroke="#1f6feb" stroke-width="1.5"/>')
    for p, c in zip(pts, counts):
        r = 2.5 + (5.5 * math.sqrt(c / cmax) if cmax > 0 else 1.5)
        tip = f"predicted {p['predicted']:.4f}, observed {p['observed']:.4f}" + (f", n={int(c)}" if c else "")
        body.append(f'<circle class="bin" cx="{_fmt(sx(p["predicted"]))}" cy="{_fmt(sy(p["observed"]))}" r="{r:.1f}" '
                    f'fill="#1f6feb" fill-opacity="0.6"><title>{escape(tip)}</title></circle>')
    return _frame(title, body, "mean predicted P(stream)", "observed stream rate")


def histogram_svg(edges: Sequence[float], counts: Sequence[float], title: str = "Importance weights",
                  xlabel: str = "weight", log_x: bool = False) -> str:
    """Bars for ``len(edges) - 1`` bins; with ``log_x`` the edges are log10 values (labels show 10^x)."""
    if len(edges) != len(counts) + 1 or not counts or not all(_finite(e) for e in edges):
        return _empty(title)
    counts = [float(c) if _finite(c) else 0.0 for c in counts]
    top = max(counts) or 1.0
    sx, sy, body = _axes(float(edges[0]), float(edges[-1]), 0.0, _nice_ceiling(top), log_x=log_x)
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        x, x2, y = sx(lo), sx(hi), sy(c)
        lo_l, hi_l = (10 ** lo, 10 ** hi) if log_x else (lo, hi)
        body.append(f'<rect class="bar" x="{_fmt(x)}" y="{_fmt(y)}" width="{max(x2 - x - 1, 0.5):.1f}" '
                    f'height="{_fmt(sy(0) - y)}" fill="#8250df" fill-opacity="0.75">'
                    f'<title>[{_tick(lo_l)}, {_tick(hi_l)}): {int(c) if c == int(c) else c}</title></rect>')
    return _frame(title, body, xlabel + (" (log scale)" if log_x else ""), "count")


def interval_svg(rows: Sequence[dict], title: str = "Candidate − production (95% CI)",
                 margin: float | None = None) -> str:
    """Horizontal interval plot: one line per row (``label``, ``value``, ``ci_low``, ``ci_high``), 0 marked."""
    rows = [r for r in rows if _finite(r.get("value"))]
    if not rows:
        return _empty(title)
    lows = [r["ci_low"] if _finite(r.get("ci_low")) else r["value"] for r in rows]
    highs = [r["ci_high"] if _finite(r.get("ci_high")) else r["value"] for r in rows]
    extra = [0.0] + ([margin] if _finite(margin) else [])
    x0, x1 = min(lows + extra), max(highs + extra)
    pad = (x1 - x0) * 0.08 or 0.01
    x0, x1 = x0 - pad, x1 + pad
    height = TOP + BOTTOM + 26 * len(rows)
    pw = W - 110 - RIGHT

    def sx(x: float) -> float:
        return 110 + (x - x0) / (x1 - x0) * pw

    body = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" aria-label="{escape(title)}" '
            f'viewBox="0 0 {W} {height}" width="{W}" height="{height}"><title>{escape(title)}</title>',
            f'<line x1="{_fmt(sx(0))}" y1="{TOP}" x2="{_fmt(sx(0))}" y2="{height - BOTTOM + 6}" stroke="#555"/>']
    if _finite(margin):
        body.append(f'<line class="margin" x1="{_fmt(sx(margin))}" y1="{TOP}" x2="{_fmt(sx(margin))}" '
                    f'y2="{height - BOTTOM + 6}" stroke="#cf222e" stroke-dasharray="3 3"/>')
    for i, (r, lo, hi) in enumerate(zip(rows, lows, highs)):
        y = TOP + 13 + 26 * i
        colour = "#1a7f37" if lo > (margin if _finite(margin) else 0.0) else "#57606a"
        body.append(f'<text x="104" y="{y + 4}" text-anchor="end" font-size="11">{escape(str(r.get("label", "")))}</text>')
        body.append(f'<line x1="{_fmt(sx(lo))}" y1="{y}" x2="{_fmt(sx(hi))}" y2="{y}" stroke="{colour}" stroke-width="3"/>')
        body.append(f'<circle cx="{_fmt(sx(r["value"]))}" cy="{y}" r="4" fill="{colour}">'
                    f'<title>{r["value"]:.5g} [{lo:.5g}, {hi:.5g}]</title></circle>')
    yb = height - BOTTOM + 18
    for v in (x0 + pad, 0.0, x1 - pad):
        body.append(f'<text x="{_fmt(sx(v))}" y="{yb}" text-anchor="middle" font-size="9">{_tick(v)}</text>')
    body.append("</svg>")
    return "\n".join(body)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _nice_ceiling(x: float) -> float:
    """Smallest of 1, 2, 2.5, 5 × 10^k that is ≥ x."""
    if x <= 0 or not math.isfinite(x):
        return 1.0
    k = math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10 ** k >= x:
            return m * 10 ** k
    return 10 ** (k + 1)  # pragma: no cover
