"""Inline SVG plots rendered on the server: no JavaScript plotting library, no build step."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

W, H = 900, 220
PAD_L, PAD_R, PAD_T, PAD_B = 56, 12, 12, 28


@dataclass(frozen=True)
class Mark:
    ts: float
    score: float
    label: str  # tooltip
    anchor: str  # id of the row it links to ("" = no row on the page)
    kind: str = ""  # "tp" | "fp" | "" → CSS class


def _fmt_time(ts: float, span: float) -> str:
    return time.strftime("%H:%M" if span > 120 else "%H:%M:%S", time.gmtime(ts))


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def score_timeline(t0: float, t1: float, line: Sequence[tuple[float, float]],
                   thresholds: Sequence[tuple[float, float]], marks: Sequence[Mark],
                   title: str = "score") -> Markup:
    """Scores over [t0, t1]: ``line`` (e.g. interval maxima), the threshold in force as a step line and
    each anomaly as a marker linking to its row. Log-scaled when values span more than two decades."""
    values = [v for _, v in line] + [v for _, v in thresholds] + [m.score for m in marks]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return Markup('<p class="empty">no scores in this period</p>')
    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo > 100
    f = (lambda v: math.log10(max(v, 1e-12))) if log else (lambda v: v)
    ylo, yhi = (f(lo), f(hi)) if log else (min(0.0, lo), hi)
    if yhi <= ylo:
        yhi = ylo + 1.0
    yhi += (yhi - ylo) * 0.05
    span = max(t1 - t0, 1e-9)

    def x(ts: float) -> float:
        return PAD_L + (ts - t0) / span * (W - PAD_L - PAD_R)

    def y(v: float) -> float:
        return H - PAD_B - (f(v) - ylo) / (yhi - ylo) * (H - PAD_T - PAD_B)

    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)} timeline">',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" class="plot"/>']
    for tv in _ticks(ylo, yhi):
        yy = H - PAD_B - (tv - ylo) / (yhi - ylo) * (H - PAD_T - PAD_B)
        text = f"1e{tv:g}" if log else f"{tv:.3g}"
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                   f'<text x="{PAD_L - 4}" y="{yy + 4:.1f}" class="ylab">{text}</text>')
    for i in range(5):
        ts = t0 + span * i / 4
        anchor = {0: "start", 4: "end"}.get(i, "middle")
        out.append(f'<text x="{x(ts):.1f}" y="{H - 8}" class="xlab" text-anchor="{anchor}">'
                   f'{_fmt_time(ts, span)}</text>')
    if line:
        pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line if math.isfinite(v))
        out.append(f'<polyline points="{pts}" class="score"/>')
    if thresholds:
        steps: list[str] = []
        for i, (t, v) in enumerate(thresholds):
            end = thresholds[i + 1][0] if i + 1 < len(thresholds) else t1
            steps.append(f"{x(max(t, t0)):.1f},{y(v):.1f} {x(end):.1f},{y(v):.1f}")
        out.append(f'<polyline points="{" ".join(steps)}" class="threshold"><title>threshold</title></polyline>')
    for m in marks:
        circle = (f'<circle cx="{x(m.ts):.1f}" cy="{y(m.score):.1f}" r="4" class="mark {escape(m.kind)}">'
                  f'<title>{escape(m.label)}</title></circle>')
        out.append(f'<a href="#{escape(m.anchor)}">{circle}</a>' if m.anchor else circle)
    out.append("</svg>")
    return Markup("".join(out))


def bars(items: Sequence[tuple[str, float]], unit: str = "") -> Markup:
    """Horizontal bars (e.g. attribution per feature), widths relative to the largest value."""
    if not items:
        return Markup("")
    top = max((v for _, v in items), default=0.0) or 1.0
    rows = "".join(
        f'<div class="bar"><span class="name">{escape(k)}</span>'
        f'<span class="fill" style="width:{max(0.0, v) / top * 100:.0f}%"></span>'
        f'<span class="val">{v:.2f}{escape(unit)}</span></div>' for k, v in items)
    return Markup(f'<div class="bars">{rows}</div>')
