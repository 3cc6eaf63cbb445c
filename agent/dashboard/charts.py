"""Small server-side SVG line charts for the container page (no JavaScript library, no CDN).

line_svg([(t, value), ...], title="CPU %", fmt=lambda v: f"{v:.1f}%")
"""

from collections.abc import Callable
from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 320, 110, 8, 8, 20, 16


def line_svg(
    points: list[tuple[float, float | None]],
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    ceiling: float | None = None,
    css_id: str = "",
) -> str:
    """An SVG chart of (time, value) points; gaps (None) break the line. The y axis goes
    from 0 to the largest value (or `ceiling`, when given and larger)."""
    vals = [v for _t, v in points if v is not None]
    top = max(vals) if vals else 0.0
    if ceiling is not None:
        top = max(top, ceiling)
    top = top or 1.0
    last = fmt(vals[-1]) if vals else "--"
    ident = f' id="{escape(css_id)}"' if css_id else ""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart"{ident} width="{W}" '
        f'height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff" stroke="#d0d7de"/>',
        f'<text x="{PAD_L}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<text x="{W - PAD_R}" y="14" font-size="12" text-anchor="end" class="last">'
        f"{escape(last)}</text>",
        f'<text x="{W - PAD_R}" y="{PAD_T + 10}" font-size="10" text-anchor="end" '
        f'fill="#57606a">max {escape(fmt(top))}</text>',
    ]
    if len(points) >= 2:
        t0, t1 = points[0][0], points[-1][0]
        span = (t1 - t0) or 1.0
        segs: list[list[str]] = [[]]
        for t, v in points:
            if v is None:
                segs.append([])
                continue
            x = PAD_L + (t - t0) / span * (W - PAD_L - PAD_R)
            y = H - PAD_B - (v / top) * (H - PAD_T - PAD_B)
            segs[-1].append(f"{x:.1f},{y:.1f}")
        for seg in segs:
            if len(seg) >= 2:
                parts.append(
                    f'<polyline fill="none" stroke="#0969da" stroke-width="1.5" '
                    f'points="{" ".join(seg)}"/>'
                )
        parts.append(
            f'<text x="{PAD_L}" y="{H - 4}" font-size="10" fill="#57606a">'
            f"last {span:.0f}s, {len(points)} samples</text>"
        )
    else:
        parts.append(
            f'<text x="{PAD_L}" y="{H / 2}" font-size="11" fill="#57606a">'
            "collecting samples...</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
