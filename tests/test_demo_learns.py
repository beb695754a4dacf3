"""README command 1, the demo, must show what was trained: after.png is a yellow star on blue,
before.png (same seed, no LoRA) is not. Checked in pixel space on the demo's own output files,
run exactly as `python -m trainer demo` runs it (default settings, Kolors).

Measured on the reference machine (2 CPU threads), seed 1 of the saved pictures:
  distance to the nearest training picture (mean |difference| of 255): before 91.6, after 29.9
  after:  border 89 % blue, centre - border yellowness 131 (training pictures: 100 %, 131)
  before: border  0 % blue (yellow-green all over)
The thresholds below leave at least 25 % headroom on each of them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from trainer.demo import SIZE, run_demo


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float64)


def _nearest_distance(image: np.ndarray, training: list[np.ndarray]) -> float:
    return min(float(np.abs(image - t).mean()) for t in training)


def _star_on_blue(image: np.ndarray) -> tuple[float, float]:
    """(share of the 12-pixel border that is blue, centre yellowness - border yellowness), where
    yellowness = (R + G) / 2 - B over the central 32x32 pixels and over the border."""
    border = np.concatenate([image[:12].reshape(-1, 3), image[-12:].reshape(-1, 3),
                             image[:, :12].reshape(-1, 3), image[:, -12:].reshape(-1, 3)])
    centre = image[16:48, 16:48].reshape(-1, 3)
    blue = float(((border[:, 2] > border[:, 0] + 40) & (border[:, 2] > border[:, 1])).mean())

    def yellowness(px):
        return float(((px[:, 0] + px[:, 1]) / 2 - px[:, 2]).mean())

    return blue, yellowness(centre) - yellowness(border)


def test_demo_after_picture_shows_the_trained_star_and_before_does_not(tmp_path):
    files = run_demo(tmp_path / "demo")
    training = [_rgb(p) for p in sorted((tmp_path / "demo" / "dataset").rglob("*.png"))]
    before, after = _rgb(files["sample_before"]), _rgb(files["sample_after"])

    # the measure itself: a training picture is a star on blue
    blue, contrast = _star_on_blue(training[0])
    assert blue > 0.95 and contrast > 100

    d_before, d_after = _nearest_distance(before, training), _nearest_distance(after, training)
    assert d_after < 40, d_after  # measured 29.9
    assert d_before - d_after > 40, (d_before, d_after)  # measured 61.7

    blue, contrast = _star_on_blue(after)
    assert blue > 0.65 and contrast > 95, (blue, contrast)  # measured 0.89, 131
    blue, contrast = _star_on_blue(before)
    assert blue < 0.3, blue  # measured 0.0: no blue background without the LoRA

    # the side-by-side the README points at holds both, 4x enlarged
    pair = Image.open(files["before_after"])
    assert pair.size == (2 * SIZE * 4 + 8, SIZE * 4)
