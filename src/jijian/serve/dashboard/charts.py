"""Line charts as inline SVG, drawn on the server: no plotting library and no script in the browser."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 220
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 58, 12, 24, 34
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 × 10^k apart) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def format_number(value: float) -> str:
    """A compact label: 12k, 3.4M, 0.012, 1.5e-05."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.3g}k"
    if magnitude >= 1e-3:
        return f"{value:.4g}"
    return f"{value:.2g}"


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_format: Callable[[float], str] = format_number,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Markup:
    """An SVG chart of one or more (x, y) series sharing axes; an empty-state box when there is no data."""
    drawn = {name: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)] for name, pts in series.items()}
    drawn = {name: pts for name, pts in drawn.items() if pts}
    label = escape(title)
    if not drawn:
        return Markup(
            f'<svg class="chart" role="img" aria-label="{label}: no data" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><text x="8" y="18" class="chart-title">{label}</text>'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="chart-empty">no data yet</text></svg>'
        )
    xs = [x for pts in drawn.values() for x, _ in pts]
    ys = [y for pts in drawn.values() for _, y in pts]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = width - _PAD_LEFT - _PAD_RIGHT, height - _PAD_TOP - _PAD_BOTTOM

    def px(x: float) -> float:
        return _PAD_LEFT + (x - x_low) / ((x_high - x_low) or 1.0) * plot_w

    def py(y: float) -> float:
        return _PAD_TOP + plot_h - (y - y_low) / ((y_high - y_low) or 1.0) * plot_h

    parts = [
        f'<svg class="chart" role="img" aria-label="{label}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><text x="8" y="16" class="chart-title">{label}</text>'
    ]
    for y in y_ticks:
        parts.append(
            f'<line x1="{_PAD_LEFT}" x2="{width - _PAD_RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="grid"/>'
            f'<text x="{_PAD_LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end" class="tick">{escape(y_format(y))}</text>'
        )
    for x in x_ticks:
        parts.append(
            f'<text x="{px(x):.1f}" y="{height - _PAD_BOTTOM + 14}" text-anchor="middle" class="tick">'
            f"{escape(format_number(x))}</text>"
        )
    parts.append(
        f'<text x="{_PAD_LEFT + plot_w / 2}" y="{height - 4}" text-anchor="middle" class="axis-label">'
        f"{escape(x_label)}</text>"
    )
    for i, (name, pts) in enumerate(drawn.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(pts) == 1:
            x, y = pts[0]
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        else:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        if len(drawn) > 1:
            legend_x = width - _PAD_RIGHT - 110 * (len(drawn) - i)
            parts.append(
                f'<rect x="{legend_x}" y="6" width="10" height="10" fill="{colour}"/>'
                f'<text x="{legend_x + 14}" y="15" class="tick">{escape(name)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
