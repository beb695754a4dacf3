"""Aspect-ratio buckets for a training run: which bucket each image trains in, and batches that
never mix buckets (kohya's enable_bucket semantics, see data/buckets.py)."""

from __future__ import annotations

import random

from ..data.buckets import BucketChoice, assign_bucket, bucket_batches, bucket_info, make_buckets
from ..data.dataset import Dataset
from .batches import epoch_order


def assign_buckets(dataset: Dataset, config) -> dict[int, BucketChoice] | None:
    """{item index: bucket choice} with enable_bucket, else None (every image centre-cropped)."""
    if not config.enable_bucket:
        return None
    buckets = make_buckets(config.size(), config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)
    return {i: assign_bucket(item.size, buckets, config.bucket_no_upscale, step=config.bucket_reso_steps)
            for i, item in enumerate(dataset.items)}


def run_batches(dataset: Dataset, choices: dict | None, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of item indices, reproducible per (seed, epoch)."""
    order = epoch_order(dataset, seed, epoch)
    if choices is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed * 1_000_003 + epoch)
    return [keys for _, keys in bucket_batches([(i, choices[i].bucket) for i in order], batch_size, rng)]


def steps_per_epoch(dataset: Dataset, choices: dict | None, batch_size: int) -> int:
    """Batches per epoch: images x repeats / batch, rounded up per bucket when bucketing."""
    return len(run_batches(dataset, choices, batch_size, 0, 0))


def metadata(dataset: Dataset, choices: dict | None) -> str:
    if choices is None:
        return ""
    items = sorted(choices)
    return bucket_info([choices[i] for i in items], [dataset.items[i].repeats for i in items])
