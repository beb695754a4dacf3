"""Turning a Dataset into batches of item indices: a seeded order per epoch."""

from __future__ import annotations

import torch

from ..data.dataset import Dataset


def epoch_order(dataset: Dataset, seed: int, epoch: int) -> list[int]:
    """Every training item ``repeats`` times (plus the balanced regularization samples),
    shuffled reproducibly per (seed, epoch)."""
    indices = [i for i, item in enumerate(dataset.items) if not item.is_reg for _ in range(item.repeats)]
    indices += dataset.reg_sequence()
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [indices[j] for j in torch.randperm(len(indices), generator=gen).tolist()]

