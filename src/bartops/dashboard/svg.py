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


# ---------------------------------------------------------------------- the Loop page
LOOP_W, LOOP_H = 760, 330
LOOP_LEFT, LOOP_RIGHT, LOOP_TOP, LOOP_BOTTOM = 56, 118, 40, 42
TRUE_COLOUR, ONLINE_COLOUR, ORACLE_COLOUR, LOGGING_COLOUR = "#0969da", "#bc4c00", "#1a7f37", "#6e7781"


def loop_svg(rounds: Sequence[dict], logging_value: float | None = None, oracle_value: float | None = None,
             title: str = "Value per page view, round by round") -> str:
    """Line chart of the loop: per round, the live policy's true value (whiskers ±2 s.e.) and the online
    stream rate (band: its interval), against horizontal lines for the oracle and the logging policy.

    ``rounds`` are dicts with ``round``, ``true_value``, ``true_value_se``, ``online_rate``,
    ``online_rate_lo`` and ``online_rate_hi`` (None or NaN where unknown).
    """
    pts = [r for r in rounds if _finite(r.get("round"))]
    if not pts:
        return _empty(title)
    xs = [float(r["round"]) for r in pts]
    true = [_val(r, "true_value") for r in pts]
    se = [_val(r, "true_value_se") or 0.0 for r in pts]
    online = [_val(r, "online_rate") for r in pts]
    lo = [_val(r, "online_rate_lo") for r in pts]
    hi = [_val(r, "online_rate_hi") for r in pts]
    refs = [(v, label, colour) for v, label, colour in ((oracle_value, "oracle", ORACLE_COLOUR),
                                                         (logging_value, "logging policy", LOGGING_COLOUR))
            if _finite(v)]
    ys = [y for t, s in zip(true, se) if t is not None for y in (t - 2 * s, t + 2 * s)]
    ys += [v for v in online + lo + hi if v is not None] + [v for v, _, _ in refs]
    if not ys:
        return _empty(title)
    y0, y1, yticks = _nice_ticks(min(ys), max(ys))
    x0, x1 = min(xs) - 0.5, max(xs) + 0.5
    left, right, top, bottom = LOOP_LEFT, LOOP_W - LOOP_RIGHT, LOOP_TOP, LOOP_H - LOOP_BOTTOM

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot loop" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {LOOP_W} {LOOP_H}" width="{LOOP_W}" height="{LOOP_H}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fafafa" stroke="#bbb"/>',
    ]
    for v in yticks:
        y = _fmt(sy(v))
        body.append(f'<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#eaeef2"/>')
        body.append(f'<text x="{left - 6}" y="{_fmt(sy(v) + 3)}" text-anchor="end" font-size="10">{_tick(v)}</text>')
    step = max(1, math.ceil(len(set(xs)) / 15))
    for x in sorted(set(xs))[::step]:
        body.append(f'<line x1="{_fmt(sx(x))}" y1="{bottom}" x2="{_fmt(sx(x))}" y2="{bottom + 4}" stroke="#555"/>')
        body.append(f'<text x="{_fmt(sx(x))}" y="{bottom + 16}" text-anchor="middle" font-size="10">{x:g}</text>')
    # reference lines, labelled in the right margin
    for v, label, colour in refs:
        y = _fmt(sy(v))
        body.append(f'<line class="ref {label.split()[0]}" x1="{left}" y1="{y}" x2="{right}" y2="{y}" '
                    f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4">'
                    f'<title>{escape(label)}: {v:.4g}</title></line>')
        body.append(f'<text x="{right + 6}" y="{_fmt(sy(v) + 4)}" font-size="11" fill="{colour}">{escape(label)} '
                    f'{v:.2f}</text>')
    # online rate: its interval as a band, the rate as a line with dots
    for seg in _segments(xs, lo, hi):
        outline = [f"{_fmt(sx(x))},{_fmt(sy(a))}" for x, a, _ in seg] + \
                  [f"{_fmt(sx(x))},{_fmt(sy(b))}" for x, _, b in reversed(seg)]
        if len(seg) == 1:  # a lone round: a short bar instead of a band
            x, a, b = seg[0]
            body.append(f'<rect class="online-band" x="{_fmt(sx(x) - 5)}" y="{_fmt(sy(b))}" width="10" '
                        f'height="{_fmt(sy(a) - sy(b))}" fill="{ONLINE_COLOUR}" fill-opacity="0.18"/>')
        else:
            body.append(f'<polygon class="online-band" points="{" ".join(outline)}" fill="{ONLINE_COLOUR}" '
                        'fill-opacity="0.15"/>')
    body += _line_with_dots(xs, online, sx, sy, ONLINE_COLOUR, "online", [
        f"round {x:g}: online rate {v:.4g}" + (f" [{a:.4g}, {b:.4g}]" if a is not None and b is not None else "")
        for x, v, a, b in zip(xs, [v or 0.0 for v in online], lo, hi)], dashed=True)
    # true value: whiskers ±2 s.e., line with dots
    for x, t, s in zip(xs, true, se):
        if t is not None and s > 0:
            body.append(f'<line class="whisker" x1="{_fmt(sx(x))}" y1="{_fmt(sy(t - 2 * s))}" x2="{_fmt(sx(x))}" '
                        f'y2="{_fmt(sy(t + 2 * s))}" stroke="{TRUE_COLOUR}" stroke-width="1.5"/>')
    body += _line_with_dots(xs, true, sx, sy, TRUE_COLOUR, "true", [
        f"round {x:g}: true value {t or 0.0:.4g} ± {2 * s:.2g} (2 s.e.)" for x, t, s in zip(xs, true, se)])
    # legend above the plot
    legend = [("line", TRUE_COLOUR, "true value (±2 s.e.)"), ("band", ONLINE_COLOUR, "online rate (95% interval)"),
              ("dash", ORACLE_COLOUR, "oracle"), ("dash", LOGGING_COLOUR, "logging policy")]
    x = left
    for kind, colour, label in legend:
        y = 16
        if kind == "band":
            body.append(f'<rect x="{x}" y="{y - 6}" width="22" height="12" fill="{colour}" fill-opacity="0.15"/>')
            body.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" stroke-width="2" '
                        'stroke-dasharray="5 3"/>')
        elif kind == "line":
            body.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
            body.append(f'<circle cx="{x + 11}" cy="{y}" r="3.5" fill="{colour}"/>')
        else:
            body.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" stroke-width="1.5" '
                        'stroke-dasharray="6 4"/>')
        body.append(f'<text class="legend" x="{x + 28}" y="{y + 4}" font-size="11">{escape(label)}</text>')
        x += 28 + 6.2 * len(label) + 22
    body.append(f'<text x="{_fmt((left + right) / 2)}" y="{LOOP_H - 8}" text-anchor="middle" font-size="11">'
                "round</text>")
    mid = _fmt((top + bottom) / 2)
    body.append(f'<text x="14" y="{mid}" text-anchor="middle" font-size="11" transform="rotate(-90 14 {mid})">'
                "streams per page view</text>")
    body.append("</svg>")
    return "\n".join(body)


def _val(d: dict, key: str) -> float | None:
    v = d.get(key)
    return float(v) if _finite(v) else None


def _segments(xs: Sequence[float], lo: Sequence[float | None], hi: Sequence[float | None]) -> list[list[tuple]]:
    """Runs of consecutive points where both ``lo`` and ``hi`` are known."""
    out: list[list[tuple]] = [[]]
    for x, a, b in zip(xs, lo, hi):
        if a is None or b is None:
            out.append([])
        else:
            out[-1].append((x, a, b))
    return [s for s in out if s]


def _line_with_dots(xs, ys, sx, sy, colour: str, cls: str, tips: Sequence[str], dashed: bool = False) -> list[str]:
    """A polyline through the known points (broken where a value is missing) and a dot with a tooltip at each."""
    d, pen_down = [], False
    for x, y in zip(xs, ys):
        if y is None:
            pen_down = False
            continue
        d.append(f"{'L' if pen_down else 'M'}{_fmt(sx(x))},{_fmt(sy(y))}")
        pen_down = True
    out = []
    if d:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(f'<path class="{cls}-line" d="{" ".join(d)}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
    for x, y, tip in zip(xs, ys, tips):
        if y is not None:
            out.append(f'<circle class="{cls}-point" cx="{_fmt(sx(x))}" cy="{_fmt(sy(y))}" r="3.5" fill="{colour}">'
                       f"<title>{escape(tip)}</title></circle>")
    return out


def _nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[float, float, list[float]]:
    """A range [y0, y1] ⊇ [lo, hi] on multiples of a 1-2-2.5-5 step, and its ticks (about ``n`` of them)."""
    if hi - lo <= 0:
        pad = abs(hi) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    step = _nice_ceiling((hi - lo) / n)
    y0, y1 = math.floor(lo / step) * step, math.ceil(hi / step) * step
    k = round((y1 - y0) / step)
    return y0, y1, [round(y0 + i * step, 12) for i in range(k + 1)]
