"""The dataset report's loss-mask findings: coverage per image, and what would train unexpectedly
(an image without a mask beside masked ones, an empty mask, a mask white everywhere, an image
alpha_mask reads without an alpha channel). Each mask is decoded once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TrainerError
from .masks import mask_image


@dataclass
class MaskFindings:
    coverage: list[tuple[Path, float]] = field(default_factory=list)  # (image, share that trains 0..1)
    without: list[Path] = field(default_factory=list)  # images with no mask beside masked ones: train whole
    empty: list[Path] = field(default_factory=list)  # black everywhere: the image trains nothing
    full: list[Path] = field(default_factory=list)  # white everywhere: the mask changes nothing
    no_alpha: list[Path] = field(default_factory=list)  # alpha_mask on an image without alpha: trains whole
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.coverage or self.no_alpha or self.unreadable)

    @property
    def mean_coverage(self) -> float:
        return sum(c for _, c in self.coverage) / len(self.coverage) if self.coverage else 0.0

    def warnings(self) -> list[str]:
        out = []
        if self.without:
            out.append(f"{len(self.without)} images without a loss mask train whole")
        if self.empty:
            out.append(f"{len(self.empty)} masks are empty (black): those images train nothing")
        if self.full:
            out.append(f"{len(self.full)} masks are white everywhere: no effect")
        if self.no_alpha:
            out.append(f"{len(self.no_alpha)} images have no alpha channel for alpha_mask: train whole")
        if self.unreadable:
            out.append(f"{len(self.unreadable)} masks cannot be read")
        return out


def mask_findings(items) -> MaskFindings:
    """Findings over the training ``items`` (ImageItems); nothing when none has a mask."""
    found = MaskFindings()
    train = [item for item in items if not item.is_reg]
    if not any(item.mask is not None for item in train):
        return found
    for item in train:
        path = Path(item.path)
        if item.mask is None:
            found.without.append(path)
            continue
        try:
            mask = mask_image(item)
        except TrainerError as err:
            found.unreadable.append((path, getattr(err, "reason", str(err))))
            continue
        if mask is None:  # masks.ALPHA on an image without one
            found.no_alpha.append(path)
            continue
        arr = np.asarray(mask)
        found.coverage.append((path, float(arr.mean() / 255.0)))
        if arr.max() == 0:
            found.empty.append(path)
        elif arr.min() == 255:
            found.full.append(path)
    return found


def mask_lines(found: MaskFindings, rel, listing) -> list[str]:
    """The report text's mask section (``listing`` as report_lines lists findings)."""
    if not found.any:
        return []
    lines = [f"loss masks: {len(found.coverage)} images, mean coverage {100 * found.mean_coverage:.0f}% "
             "(white = trains)"]
    lines += listing("mask coverage:", [f"{rel(p)}: {100 * c:.0f}%" for p, c in found.coverage])
    lines += listing("warning: no loss mask (trains the whole image):", [rel(p) for p in found.without])
    lines += listing("warning: empty mask (trains nothing):", [rel(p) for p in found.empty])
    lines += listing("warning: mask white everywhere (no effect):", [rel(p) for p in found.full])
    lines += listing("warning: alpha_mask but no alpha channel (trains whole):", [rel(p) for p in found.no_alpha])
    lines += listing("warning: unreadable masks:", [f"{rel(p)}: {why}" for p, why in found.unreadable])
    return lines
