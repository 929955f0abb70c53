"""Small SVG charts for the status page, drawn by the server: no script, no stylesheet,
nothing loaded from anywhere. One value per minute, oldest first, the newest at the right.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

WIDTH, HEIGHT = 480, 130
#: Room for the axis labels: left, right, top, bottom.
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 10, 22


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    scale = 1.0
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def _number(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def _frame(label: str, top: float, unit: str, minutes: int, body: str) -> str:
    plot_h = HEIGHT - _TOP - _BOTTOM
    bottom = _TOP + plot_h
    axis = (
        f'<line x1="{_LEFT}" y1="{bottom}" x2="{WIDTH - _RIGHT}" y2="{bottom}" stroke="#888"/>'
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{bottom}" stroke="#888"/>'
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{WIDTH - _RIGHT}" y2="{_TOP}" stroke="#eee"/>'
        f'<text x="{_LEFT - 4}" y="{_TOP + 4}" text-anchor="end">{_number(top)}</text>'
        f'<text x="{_LEFT - 4}" y="{bottom}" text-anchor="end">0</text>'
        f'<text x="{_LEFT - 4}" y="{_TOP + plot_h / 2 + 4}" text-anchor="end">'
        f"{html.escape(unit)}</text>"
        f'<text x="{_LEFT}" y="{HEIGHT - 6}">-{minutes} min</text>'
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 6}" text-anchor="end">now</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(label)}" '
        f'font-family="sans-serif" font-size="11" fill="#333">'
        f"<title>{html.escape(label)}</title>{axis}{body}</svg>"
    )


def bar_chart(values: Sequence[float], label: str, unit: str, color: str = "#3b7dd8") -> str:
    """One bar per value (counts per minute)."""
    top = _nice_max(max(values, default=0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(values), 1)
    bars = []
    for n, value in enumerate(values):
        if value <= 0:
            continue
        h = max(1.0, plot_h * value / top)
        bars.append(
            f'<rect x="{_LEFT + n * step + 0.5:.1f}" y="{_TOP + plot_h - h:.1f}" '
            f'width="{max(step - 1, 1):.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{_number(value)}</title></rect>"
        )
    return _frame(label, top, unit, len(values), "".join(bars))


def line_chart(
    values: Sequence[float | None], label: str, unit: str, color: str = "#d8743b"
) -> str:
    """A line through the values that exist (a gap where a minute has none), with dots."""
    top = _nice_max(max((v for v in values if v is not None), default=0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(values), 1)
    runs: list[list[str]] = [[]]
    dots = []
    for n, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        x, y = _LEFT + (n + 0.5) * step, _TOP + plot_h - plot_h * min(value, top) / top
        runs[-1].append(f"{x:.1f},{y:.1f}")
        dots.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{color}">'
            f"<title>{value:.3g}</title></circle>"
        )
    lines = "".join(
        f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="1.5"/>'
        for run in runs
        if len(run) > 1
    )
    return _frame(label, top, unit, len(values), lines + "".join(dots))
