"""Turning a Dataset into batches: seeded epoch order, fitted pixels, captions, size info."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.dataset import Dataset
from ..data.images import load_fitted


@dataclass
class Batch:
    pixels: torch.Tensor  # [B, 3, H, W] in -1..1
    captions: list[str]
    original_sizes: list[tuple[int, int]]
    crops: list[tuple[int, int]]


def epoch_order(dataset: Dataset, seed: int, epoch: int) -> list[int]:
    """Every item ``repeats`` times, shuffled reproducibly per (seed, epoch)."""
    indices = [i for i, item in enumerate(dataset.items) for _ in range(item.repeats)]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [indices[j] for j in torch.randperm(len(indices), generator=gen).tolist()]


def make_batch(dataset: Dataset, indices: list[int], width: int, height: int) -> Batch:
    fitted = [load_fitted(dataset.items[i].path, width, height) for i in indices]
    return Batch(
        pixels=torch.stack([f.pixels for f in fitted]),
        captions=[dataset.items[i].caption for i in indices],
        original_sizes=[f.original_size for f in fitted],
        crops=[f.crop_top_left for f in fitted],
    )


def epoch_batches(dataset: Dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = epoch_order(dataset, seed, epoch)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
