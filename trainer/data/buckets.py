"""Aspect-ratio bucketing with kohya-ss/sd-scripts' semantics (enable_bucket, min_bucket_reso,
max_bucket_reso, bucket_reso_steps, bucket_no_upscale).

Why kohya's rules and not ``diffusers.training_utils.generate_aspect_ratio_buckets`` /
``find_nearest_bucket``: users of this pack compare its runs and its LoRA metadata
(ss_bucket_info) with kohya's. kohya's bucket set is every (w, h) with sides a multiple of
``bucket_reso_steps`` between min and max size and the largest height that keeps w*h within the
training area; an image goes to the bucket with the nearest aspect ratio and is scaled to cover
it, so the crop is at most a fraction of one step. diffusers' helper builds a different set
(fixed list of ratios, sizes rounded differently) and picks by another rule, so the same
dataset would land in different buckets and crop differently than in kohya.

Functions:
* ``make_buckets``: kohya's model_util.make_bucket_resolutions.
* ``assign_bucket``: kohya's BucketManager.select_bucket (+ the centre crop of
  trim_and_resize_if_required), returning where the image is resized to and where the crop
  starts; the crop (top, left) in the resized image is what SDXL/Kolors time ids carry as
  crops_coords_top_left (as trainer.data.images.fit_center records it). kohya's own
  ``get_crop_ltrb`` value is kept too, for comparison.
* ``bucket_batches``: per epoch, shuffle each bucket, cut it into batches, shuffle the batches;
  a batch never mixes buckets (the tensors could not be stacked otherwise).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

from ..errors import TrainerError


@dataclass(frozen=True)
class BucketChoice:
    bucket: tuple[int, int]  # (width, height) of the training tensor
    resized_size: tuple[int, int]  # (width, height) the image is resized to before cropping
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image (SDXL time ids)
    ar_error: float  # bucket aspect ratio - image aspect ratio
    kohya_crop_ltrb: tuple[float, float, float, float]  # kohya's get_crop_ltrb (bucket coordinates)

    @property
    def crop_size(self) -> tuple[int, int]:
        """Pixels cut away (width, height) from the resized image."""
        return self.resized_size[0] - self.bucket[0], self.resized_size[1] - self.bucket[1]


def make_buckets(max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024, step: int = 64) -> list[tuple[int, int]]:
    """All kohya buckets for a training area of ``max_reso`` = (width, height): the square
    ``floor(sqrt(area)/step)*step``, and for every width from min_size to max_size in ``step``s the
    tallest height (a multiple of ``step``, at most max_size) with width*height <= area, plus its
    transpose. Sorted (width, height) tuples."""
    max_w, max_h = (int(v) for v in max_reso)
    if step < 8 or step % 8:
        raise TrainerError(f"bucket_reso_steps must be a multiple of 8 (got {step}); use 64 (kohya's default).")
    for name, value in (("min_bucket_reso", min_size), ("max_bucket_reso", max_size)):
        if value % step:
            raise TrainerError(f"{name} {value} is not a multiple of bucket_reso_steps {step}: "
                               f"use {max(step, value // step * step)} or {(value // step + 1) * step}.")
    if min_size <= 0 or min_size > max_size:
        raise TrainerError(f"min_bucket_reso ({min_size}) must be positive and at most max_bucket_reso ({max_size}).")
    if max_size < max(max_w, max_h):
        raise TrainerError(f"max_bucket_reso ({max_size}) must be at least the resolution's longer side "
                           f"({max(max_w, max_h)}): raise it, e.g. to {max(max_w, max_h) * 2}.")
    area = max_w * max_h
    resos = {(int(math.sqrt(area) // step) * step,) * 2}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((area // width) // step) * step)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


def _round_to_step(x: float, step: int) -> int:
    x = int(x + 0.5)
    return x - x % step


def assign_bucket(image_size: tuple[int, int], buckets: Sequence[tuple[int, int]], no_upscale: bool = False,
                  max_area: int | None = None, step: int = 64) -> BucketChoice:
    """The bucket for an image of ``image_size`` = (width, height), as kohya picks it.

    Default: the bucket of the same size if there is one, else the one whose aspect ratio is
    nearest; the image is scaled (up or down) so it covers the bucket (the side that fits exactly
    is the one along which the image is relatively shorter) and the overflow is cropped from the
    centre. ``no_upscale`` (kohya's bucket_no_upscale): never enlarge; an image above ``max_area``
    (default: the largest bucket area) is shrunk to that area keeping its aspect ratio, and the
    bucket is its size rounded down to ``step`` — such buckets need not be in ``buckets``."""
    img_w, img_h = (int(v) for v in image_size)
    if img_w <= 0 or img_h <= 0:
        raise TrainerError(f"Image size {image_size} is not valid.")
    if not buckets and not no_upscale:
        raise TrainerError("No buckets: build them with make_buckets(...) first.")
    aspect = img_w / img_h
    if not no_upscale:
        if (img_w, img_h) in set(buckets):
            reso = (img_w, img_h)
        else:
            reso = min(buckets, key=lambda r: abs(r[0] / r[1] - aspect))
        if aspect > reso[0] / reso[1]:  # image wider than the bucket: match heights
            scale = reso[1] / img_h
        else:
            scale = reso[0] / img_w
        resized = (int(img_w * scale + 0.5), int(img_h * scale + 0.5))
    else:
        area = max_area if max_area is not None else max(w * h for w, h in buckets)
        if img_w * img_h > area:
            rw = math.sqrt(area * aspect)
            rh = area / rw
            bw = _round_to_step(rw, step)
            bh_w = _round_to_step(bw / aspect, step)
            bh = _round_to_step(rh, step)
            bw_h = _round_to_step(bh * aspect, step)
            err_w = abs(bw / bh_w - aspect) if bh_w else math.inf
            err_h = abs(bw_h / bh - aspect) if bh else math.inf
            if err_w < err_h:
                resized = (bw, int(bw / aspect + 0.5))
            else:
                resized = (int(bh * aspect + 0.5), bh)
        else:
            resized = (img_w, img_h)
        reso = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
        if reso[0] == 0 or reso[1] == 0:
            raise TrainerError(f"Image {img_w}x{img_h} is smaller than one bucket step ({step} px) with "
                               "bucket_no_upscale: enlarge it or turn bucket_no_upscale off.")
    # kohya's trim: centre crop of the overflow
    left = (resized[0] - reso[0]) // 2
    top = (resized[1] - reso[1]) // 2
    return BucketChoice(tuple(reso), tuple(resized), (top, left), reso[0] / reso[1] - aspect,
                        _kohya_crop_ltrb(reso, (img_w, img_h)))


def _kohya_crop_ltrb(bucket, image_size):
    bucket_ar, image_ar = bucket[0] / bucket[1], image_size[0] / image_size[1]
    if bucket_ar > image_ar:
        rw, rh = bucket[1] * image_ar, bucket[1]
    else:
        rw, rh = bucket[0], bucket[0] / image_ar
    left, top = (bucket[0] - rw) // 2, (bucket[1] - rh) // 2
    return left, top, left + rw, top + rh


def apply_bucket(image, choice: BucketChoice):
    """Resize a PIL image to ``choice.resized_size`` (Lanczos) and crop it to the bucket."""
    from PIL import Image

    if image.size != choice.resized_size:
        image = image.resize(choice.resized_size, Image.Resampling.LANCZOS)
    top, left = choice.crop_top_left
    return image.crop((left, top, left + choice.bucket[0], top + choice.bucket[1]))


def bucket_batches(items_with_buckets: Iterable[tuple[Hashable, tuple[int, int]]], batch_size: int,
                   rng: random.Random) -> list[tuple[tuple[int, int], list]]:
    """[(bucket, [keys])]: for (key, bucket) pairs (one pair per sample, so repeats appear
    repeatedly), shuffle each bucket, cut it into batches of ``batch_size`` (the last one of a
    bucket may be smaller), and shuffle the order of all batches. A batch never mixes buckets."""
    if batch_size < 1:
        raise TrainerError(f"train_batch_size must be at least 1 (got {batch_size}).")
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for key, bucket in items_with_buckets:
        groups[tuple(bucket)].append(key)
    batches = []
    for bucket in sorted(groups):
        keys = groups[bucket]
        rng.shuffle(keys)
        batches += [(bucket, keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)]
    rng.shuffle(batches)
    return batches


def bucket_info(choices: Sequence[BucketChoice], repeats: Sequence[int] | None = None) -> str:
    """kohya's ss_bucket_info metadata: {"buckets": {i: {"resolution": [w, h], "count": n}},
    "mean_img_ar_error": x} as a JSON string (count includes repeats when given)."""
    repeats = list(repeats) if repeats is not None else [1] * len(choices)
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for choice, rep in zip(choices, repeats):
        counts[choice.bucket] += rep
    buckets = {i: {"resolution": list(reso), "count": counts[reso]} for i, reso in enumerate(sorted(counts))}
    mean_error = sum(abs(c.ar_error) for c in choices) / len(choices) if choices else 0.0
    return json.dumps({"buckets": buckets, "mean_img_ar_error": mean_error})
