"""Aspect-ratio buckets for a training run: which bucket each image trains in, and batches that
never mix buckets (kohya's enable_bucket semantics, see data/buckets.py).

With several datasets (items pointing to kohya subsets, data/subsets.py) each dataset buckets at
its own resolution and settings and batches by its own batch_size; a batch never mixes datasets,
and an epoch is every dataset's batches shuffled together (kohya's DatasetGroup)."""

from __future__ import annotations

import random
from collections import Counter

from ..data.buckets import BucketChoice, assign_bucket, bucket_batches, bucket_info, make_buckets
from ..data.dataset import Dataset
from ..data.subsets import parts_of
from .batches import epoch_order


def assign_buckets(dataset: Dataset, config) -> dict[int, BucketChoice] | None:
    """{item index: bucket choice} with enable_bucket, else None (every image centre-cropped).
    With datasets (parts): the items of bucketing parts only; the others are centre-cropped to
    their part's resolution."""
    if parts_of(dataset.items):
        return _part_buckets(dataset, config)
    if not config.enable_bucket:
        return None
    buckets = make_buckets(config.size(), config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)
    return {i: assign_bucket(item.size, buckets, config.bucket_no_upscale, step=config.bucket_reso_steps)
            for i, item in enumerate(dataset.items)}


def _part_buckets(dataset: Dataset, config) -> dict[int, BucketChoice] | None:
    choices = {}
    for part, indices in _by_part(dataset, range(len(dataset.items))):
        if part is None and config.enable_bucket:  # items without a subset: the config's buckets
            sub = assign_buckets(Dataset(dataset.root, [dataset.items[i] for i in indices]), config)
            choices.update({i: sub[k] for k, i in enumerate(indices)})
        elif part is not None and part.enable_bucket:
            buckets = make_buckets(part.resolution, part.min_bucket_reso, part.max_bucket_reso, part.bucket_reso_steps)
            area = part.resolution[0] * part.resolution[1]  # kohya's no-upscale limit: the resolution's area
            choices.update({i: assign_bucket(dataset.items[i].size, buckets, part.bucket_no_upscale, area,
                                             part.bucket_reso_steps) for i in indices})
    return choices or None


def _by_part(dataset: Dataset, indices) -> list[tuple[object, list[int]]]:
    """[(part or None, its indices in the given order)], parts in order of first appearance."""
    groups: dict[int, tuple[object, list[int]]] = {}
    for i in indices:
        subset = dataset.items[i].subset
        part = subset.part if subset is not None else None
        groups.setdefault(id(part), (part, []))[1].append(i)
    return list(groups.values())


def run_batches(dataset: Dataset, choices: dict | None, batch_size: int, seed: int, epoch: int,
                world: int = 1) -> list[list[int]]:
    """The epoch's batches of item indices, reproducible per (seed, epoch). ``batch_size``: items per
    batch, all processes together; a dataset's (part's) own batch_size counts per process (x ``world``)."""
    order = epoch_order(dataset, seed, epoch)
    if parts_of(dataset.items):
        rng = random.Random(seed * 1_000_003 + epoch)
        batches = []
        for part, indices in _by_part(dataset, order):
            size = part.batch_size * world if part is not None else batch_size
            pairs = [(i, choices[i].bucket if choices and i in choices else (0, 0)) for i in indices]
            batches += [keys for _, keys in bucket_batches(pairs, size, rng)]
        rng.shuffle(batches)
        return batches
    if choices is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed * 1_000_003 + epoch)
    return [keys for _, keys in bucket_batches([(i, choices[i].bucket) for i in order], batch_size, rng)]


def steps_per_epoch(dataset: Dataset, choices: dict | None, batch_size: int, world: int = 1) -> int:
    """Batches per epoch: images x repeats / batch, rounded up per bucket when bucketing (kohya:
    the sum over datasets and their buckets)."""
    return len(run_batches(dataset, choices, batch_size, 0, 0, world))


def part_lines(dataset: Dataset, choices: dict | None, world: int = 1) -> list[str]:
    """One log line per dataset (part): its size, batch and batches per epoch; [] without parts."""
    samples = Counter(i for i, item in enumerate(dataset.items) if not item.is_reg for _ in range(item.repeats))
    samples.update(dataset.reg_sequence())
    lines = []
    for part, indices in _by_part(dataset, range(len(dataset.items))):
        if part is None:
            continue
        per_bucket = Counter()
        for i in indices:
            per_bucket[choices[i].bucket if choices and i in choices else part.resolution] += samples[i]
        size = part.batch_size * world
        train = sum(samples[i] for i in indices if not dataset.items[i].is_reg)
        reg = sum(samples[i] for i in indices if dataset.items[i].is_reg)
        lines.append(f"{part.name}: {part.resolution[0]}x{part.resolution[1]}"
                     f"{f', {len(per_bucket)} buckets' if part.enable_bucket else ''}, "
                     f"{train} samples{f' + {reg} regularization' if reg else ''}, batch {part.batch_size} -> "
                     f"{sum(-(-n // size) for n in per_bucket.values())} batches per epoch")
    return lines


def metadata(dataset: Dataset, choices: dict | None) -> str:
    if choices is None:
        return ""
    items = sorted(choices)
    return bucket_info([choices[i] for i in items], [dataset.items[i].repeats for i in items])
