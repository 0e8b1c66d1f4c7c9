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


def read_metrics(path: str | os.PathLike) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten (and 2x, 5x) between lo and hi, for a log axis."""
    ticks = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def draw_loss_curve(records: list[dict], path: str | os.PathLike, width: int = 640, height: int = 400) -> Path:
    """Draw the loss series of ``records`` (log y) against ``step`` and write a PNG atomically."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 20, 20, height - 40
    points = {name: [(r["step"], r[name]) for r in records if r.get(name, 0) > 0] for name, _ in SERIES}
    values = [v for series in points.values() for _, v in series]
    steps = [s for series in points.values() for s, _ in series]
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    if values:
        y_lo, y_hi = min(values) / 1.2, max(values) * 1.2
        x_lo, x_hi = min(steps), max(max(steps), min(steps) + 1)

        def xy(step, value):
            x = left + (step - x_lo) / (x_hi - x_lo) * (right - left)
            y = bottom - (math.log(value) - math.log(y_lo)) / (math.log(y_hi) - math.log(y_lo)) * (bottom - top)
            return x, y

        for tick in _nice_ticks(y_lo, y_hi):
            _, y = xy(x_lo, tick)
            draw.line((left, y, right, y), fill=(225, 225, 225))
            draw.text((4, y - 6), f"{tick:g}", fill=(0, 0, 0))
        for i in range(5):
            step = x_lo + (x_hi - x_lo) * i / 4
            x, _ = xy(step, y_lo)
            draw.text((x - 12, bottom + 6), f"{step:.0f}", fill=(0, 0, 0))
        for name, colour in reversed(SERIES):
            series = points[name]
            if len(series) > 1:
                draw.line([xy(s, v) for s, v in series], fill=colour, width=2 if name == "loss" else 1)
        for i, (name, colour) in enumerate(SERIES):
            draw.line((right - 150, top + 10 + 14 * i, right - 130, top + 10 + 14 * i), fill=colour, width=2)
            draw.text((right - 125, top + 4 + 14 * i), name, fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 40, height - 18), "training step", fill=(0, 0, 0))
    draw.text((left + 4, top + 4), "loss (log scale)", fill=(0, 0, 0))
    path = Path(path)
    with ddpm_io.atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    return path
