"""One small SVG line chart for the benchmarks' plots: no plotting library, a file the README can show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class Series:
    """One line of a chart: its label in the legend and its (x, y) points in data units, drawn in order.

    ``steps`` draws it as a step function (each y holds until the next x), as savings over time are;
    ``dashed`` tells apart lines that share a colour (repeats of one contender)."""

    label: str
    points: Sequence[tuple[float, float]]
    colour_key: str = ""
    steps: bool = False
    dashed: bool = False


def line_chart(
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    x_ticks: Sequence[tuple[float, str]],
    y_ticks: Sequence[tuple[float, str]],
    title: str = "",
) -> str:
    """Return an SVG document plotting ``series`` over the given axes; one colour per distinct ``colour_key``
    (the label when empty), one legend entry per colour.

    Raises:
        ValueError: an axis range is empty or reversed.
    """
    (x_lo, x_hi), (y_lo, y_hi) = x_range, y_range
    if not (x_hi > x_lo and y_hi > y_lo):
        raise ValueError(f"empty axis range: x {x_range}, y {y_range}")
    width, height, pad, top = 600, 360, 56, 36

    def x(value: float) -> float:
        return pad + (min(max(value, x_lo), x_hi) - x_lo) / (x_hi - x_lo) * (width - 2 * pad)

    def y(value: float) -> float:
        return height - pad - (min(max(value, y_lo), y_hi) - y_lo) / (y_hi - y_lo) * (height - pad - top)

    keys = list(dict.fromkeys(s.colour_key or s.label for s in series))
    colours = {key: PALETTE[index % len(PALETTE)] for index, key in enumerate(keys)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{top}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 14}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{(height + top - pad) / 2}" transform="rotate(-90 14 {(height + top - pad) / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    for value, text in y_ticks:
        parts.append(f'<text x="{pad - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{escape(text)}</text>')
    for value, text in x_ticks:
        parts.append(f'<text x="{x(value):.1f}" y="{height - pad + 14}" text-anchor="middle">{escape(text)}</text>')
    for line in series:
        points = list(line.points)
        if line.steps:
            points = [p for (at, value), (after, _) in zip(points, [*points[1:], points[-1]], strict=True)
                      for p in ((at, value), (after, value))] if points else []
        if not points:
            continue
        path = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in points)
        dash = ' stroke-dasharray="5,3"' if line.dashed else ""
        parts.append(f'<polyline fill="none" stroke="{colours[line.colour_key or line.label]}" stroke-width="2"'
                     f'{dash} points="{path}"/>')
    for index, key in enumerate(keys):
        parts.append(f'<text x="{width - pad - 130}" y="{top + 14 + 14 * index}" fill="{colours[key]}">'
                     f"{escape(key)}</text>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
