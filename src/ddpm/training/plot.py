"""A loss-curve PNG drawn with PIL from ``metrics.jsonl`` (no plotting library needed).

The trainer redraws ``<output_dir>/loss.png`` at every checkpoint: the training loss and its four timestep quartiles
(q0 = t in the first quarter of 0..T-1, the least noisy), log-scaled, against the step.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

from ddpm import io as ddpm_io

SERIES = (
    ("loss", (0, 0, 0)),
    ("loss_q0", (31, 119, 180)),
    ("loss_q1", (44, 160, 44)),
    ("loss_q2", (255, 127, 14)),
    ("loss_q3", (214, 39, 40)),
)
#: What each series is, as the legend says it (quartiles of t = 0..T-1; q0 the least noisy).
LEGEND = {
    "loss": "loss (all t)",
    "loss_q0": "q0: t < T/4",
    "loss_q1": "q1: T/4 <= t < T/2",
    "loss_q2": "q2: T/2 <= t < 3T/4",
    "loss_q3": "q3: t >= 3T/4",
}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def draw_loss_curve(records: list[dict], path: str | os.PathLike, width: int = 640, height: int = 400) -> Path:
    """Draw the loss series of ``records`` (log y) against ``step`` and write a PNG atomically: tick labels on
    both axes, axis titles, and a legend to the right of the plot saying which t each quartile covers."""
    from ddpm.images import draw_text, draw_vertical_text, font, linear_ticks, log_ticks, text_size, tick_label

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    tick_font, title_font = font(12), font(14)
    legend_w = max(text_size(draw, text, tick_font)[0] for text in LEGEND.values()) + 44
    left, right, top, bottom = 76, width - legend_w - 12, 34, height - 52
    points = {name: [(r["step"], r[name]) for r in records if r.get(name, 0) > 0] for name, _ in SERIES}
    values = [v for series in points.values() for _, v in series]
    steps = [s for series in points.values() for s, _ in series]
    draw_text(draw, (left, top / 2), "training loss, all t and by quartile of t (0..T-1; q0 least noisy)", title_font)
    if values:
        y_lo, y_hi = min(values) / 1.2, max(values) * 1.2
        x_lo, x_hi = min(steps), max(max(steps), min(steps) + 1)

        def xy(step, value):
            x = left + (step - x_lo) / (x_hi - x_lo) * (right - left)
            y = bottom - (math.log(value) - math.log(y_lo)) / (math.log(y_hi) - math.log(y_lo)) * (bottom - top)
            return x, y

        for tick in log_ticks(y_lo, y_hi):
            _, y = xy(x_lo, tick)
            draw.line((left, y, right, y), fill=(225, 225, 225))
            draw.line((left - 5, y, left, y), fill=(0, 0, 0))
            draw_text(draw, (left - 8, y), tick_label(tick), tick_font, align="right")
        for step in linear_ticks(x_lo, x_hi, max_ticks=6):
            x, _ = xy(step, y_lo)
            draw.line((x, top, x, bottom), fill=(235, 235, 235))
            draw.line((x, bottom, x, bottom + 5), fill=(0, 0, 0))
            draw_text(draw, (x, bottom + 8), tick_label(step), tick_font, align="center", valign="top")
        for name, colour in reversed(SERIES):
            series = points[name]
            if len(series) > 1:
                draw.line([xy(s, v) for s, v in series], fill=colour, width=2 if name == "loss" else 1)
            elif series:
                x, y = xy(*series[0])
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        for i, (name, colour) in enumerate((n, c) for n, c in SERIES if points[n]):
            y = top + 10 + 20 * i
            draw.line((right + 14, y, right + 36, y), fill=colour, width=3 if name == "loss" else 2)
            draw_text(draw, (right + 42, y), LEGEND[name], tick_font)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    draw_text(draw, ((left + right) / 2, height - 12), "training step", title_font, align="center", valign="bottom")
    draw_vertical_text(image, (16, (top + bottom) / 2), "loss (log scale)", title_font)
    path = Path(path)
    with ddpm_io.atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    return path
