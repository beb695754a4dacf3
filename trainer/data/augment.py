"""kohya's image augmentations: flip_aug, color_aug, random_crop (seed 001 lists flips and colour
changes). Decisions come from a seeded ``random.Random`` so runs and resumes repeat exactly.

``fit_image`` also returns the geometry it applied (resize, crop box, flip), so the image's loss
mask (masks.fit_mask) follows it exactly; colour changes leave the mask alone."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import FittedImage, cover_size, fit_center, open_rgb, to_tensor


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


@dataclass(frozen=True)
class Geometry:
    """What was done to an image's shape: resized to ``resized_size`` (width, height), cut at
    ``top_left`` (top, left) to ``size`` (width, height), then mirrored when ``flipped``."""

    resized_size: tuple[int, int]
    top_left: tuple[int, int]
    size: tuple[int, int]
    flipped: bool = False


def fit_random(img: Image.Image, width: int, height: int, rng: random.Random):
    """Resize to cover width x height, then crop a random window; returns (crop, (top, left))."""
    new_w, new_h = cover_size(img.size, width, height)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    top, left = rng.randint(0, new_h - height), rng.randint(0, new_w - width)
    return img.crop((left, top, left + width, top + height)), (top, left)


def shift_hue(img: Image.Image, degrees: float) -> Image.Image:
    hsv = np.asarray(img.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def fit_image(path, width: int, height: int, aug: Augment, rng: random.Random) -> tuple[FittedImage, Geometry]:
    """The image at ``path`` fitted to width x height (random or centre crop), flipped and colour-
    shifted as ``aug`` draws it, with the geometry applied."""
    img = open_rgb(path)
    original = (img.height, img.width)
    resized = cover_size(img.size, width, height)
    if aug.random_crop:
        img, crop = fit_random(img, width, height, rng)
    else:
        img, crop = fit_center(img, width, height)
    img, flipped = augment_image(img, aug, rng)
    return FittedImage(to_tensor(img), original, crop), Geometry(resized, crop, (width, height), flipped)


def augment_image(img: Image.Image, aug: Augment, rng: random.Random) -> tuple[Image.Image, bool]:
    """The flip and colour parts of ``aug`` (cropping is done by the caller); (image, flipped)."""
    flipped = bool(aug.flip_aug and rng.random() < 0.5)
    if flipped:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug.color_aug:
        img = shift_hue(img, rng.uniform(-8.0, 8.0))
    return img, flipped
