"""Loss history as CSV and as a PNG chart (drawn with Pillow: no plotting dependency)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from .atomic import save_image, write_text


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def write_loss_csv(losses: list[float], path) -> Path:
    rows = ["step,loss,smoothed"] + [f"{i},{v:.6f},{s:.6f}" for i, (v, s) in
                                      enumerate(zip(losses, smooth(losses)), 1)]
    return write_text(path, "\n".join(rows) + "\n")


def loss_chart(losses: list[float], width: int = 640, height: int = 360, title: str = "training loss") -> Image.Image:
    """Raw loss (light) and smoothed loss (dark) against step, with min/max labels."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 16, 28, height - 32
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    draw.text((left, 8), f"{title} ({len(losses)} steps)", fill=(0, 0, 0))
    if not losses:
        draw.text((left + 10, top + 10), "no steps yet", fill=(90, 90, 90))
        return img
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, len(losses) - 1))
        return x, bottom - (bottom - top) * (v - lo) / span

    for series, colour in ((losses, (170, 200, 235)), (smooth(losses), (20, 80, 170))):
        pts = [point(i, v) for i, v in enumerate(series)]
        if len(pts) == 1:
            pts.append(pts[0])
        draw.line(pts, fill=colour, width=2)
    draw.text((4, top - 4), f"{hi:.4f}", fill=(60, 60, 60))
    draw.text((4, bottom - 8), f"{lo:.4f}", fill=(60, 60, 60))
    draw.text((left, bottom + 8), "1", fill=(60, 60, 60))
    draw.text((right - 40, bottom + 8), str(len(losses)), fill=(60, 60, 60))
    return img


def write_loss_chart(losses: list[float], path) -> Path:
    return save_image(path, loss_chart(losses))
