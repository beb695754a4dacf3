"""kohya's image augmentations: flip_aug, color_aug, random_crop (seed 001 lists flips and colour
changes). Decisions come from a seeded ``random.Random`` so runs and resumes repeat exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import FittedImage, fit_center, open_rgb, to_tensor


@dataclass
class Augment:
    flip_aug: bool = False  # mirror left-right half of the time (not for asymmetric subjects/text)
    color_aug: bool = False  # small random hue shift
    random_crop: bool = False  # a random window instead of the centre

    @property
    def active(self) -> bool:
        return self.flip_aug or self.color_aug or self.random_crop

    @classmethod
    def from_config(cls, config) -> "Augment":
        return cls(config.flip_aug, config.color_aug, config.random_crop)


def fit_random(img: Image.Image, width: int, height: int, rng: random.Random):
    """Resize to cover width x height, then crop a random window; returns (crop, (top, left))."""
    scale = max(width / img.width, height / img.height)
    new_w, new_h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    top, left = rng.randint(0, new_h - height), rng.randint(0, new_w - width)
    return img.crop((left, top, left + width, top + height)), (top, left)


def shift_hue(img: Image.Image, degrees: float) -> Image.Image:
    hsv = np.asarray(img.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def load_augmented(path, width: int, height: int, aug: Augment, rng: random.Random) -> FittedImage:
    img = open_rgb(path)
    original = (img.height, img.width)
    if aug.random_crop:
        img, crop = fit_random(img, width, height, rng)
    else:
        img, crop = fit_center(img, width, height)
    return FittedImage(to_tensor(augment_pixels(img, aug, rng)), original, crop)


def augment_pixels(img: Image.Image, aug: Augment, rng: random.Random) -> Image.Image:
    """The flip and colour parts of ``aug`` (cropping is done by the caller)."""
    if aug.flip_aug and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug.color_aug:
        img = shift_hue(img, rng.uniform(-8.0, 8.0))
    return img
