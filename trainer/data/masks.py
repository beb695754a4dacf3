"""Loss masks (kohya's masked_loss): one grey-level image per training image, white = train.

Where a mask comes from, with kohya's names:
* ``conditioning_data_dir``: an image with the training image's file name (any image format),
  of the same size; kohya reads its R channel (an RGBA file's alpha is dropped, not used);
* ``alpha_mask``: the training image's own alpha channel (an image without one trains whole);
* in ComfyUI: a MASK batch or a masks folder given to Dataset Loader (written as mask files).

A mask follows its image through every crop, resize, bucket and flip (``fit_mask``), and is
reduced to the latent size by area averaging before it weights the loss (train/masked_loss.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import TrainerError
from .images import IMAGE_EXTENSIONS, UnreadableImage, open_upright, to_8bit

ALPHA = "alpha"  # ImageItem.mask value: the image's own alpha channel is the mask


def read_mask_file(path) -> Image.Image:
    """A mask file as kohya reads it (RGB, then the R channel), upright, as an 8-bit "L" image."""
    img = to_8bit(open_upright(path))
    if img.mode == "L":
        return img
    return img.convert("RGB").getchannel("R")


def read_alpha(path) -> Image.Image | None:
    """The image's alpha channel ("L", upright), None when it has none (kohya: trains whole)."""
    img = open_upright(path)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").getchannel("A")
    return None


def mask_image(item) -> Image.Image | None:
    """Item ``item``'s mask ("L", the image's upright size), None when it has none."""
    if item.mask is None:
        return None
    return read_alpha(item.path) if item.mask == ALPHA else read_mask_file(item.mask)


def cut_mask(mask: Image.Image, resized_size: tuple[int, int], top_left: tuple[int, int],
             size: tuple[int, int]) -> Image.Image:
    """``mask`` resized to ``resized_size`` (width, height) as its image was (Lanczos), then cut
    at ``top_left`` (top, left) to ``size`` (width, height)."""
    if mask.size != tuple(resized_size):
        mask = mask.resize(tuple(resized_size), Image.Resampling.LANCZOS)
    top, left = top_left
    return mask.crop((left, top, left + size[0], top + size[1]))


def fit_mask(mask: Image.Image, resized_size: tuple[int, int], top_left: tuple[int, int],
             size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """``mask`` through its image's geometry (cut_mask), mirrored when the image was; [1, H, W] in 0..1."""
    mask = cut_mask(mask, resized_size, top_left, size)
    if flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]


def to_latent_size(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """kohya's reduction of a pixel mask to the loss's size: area interpolation ([1, h, w])."""
    return torch.nn.functional.interpolate(mask[None].float(), size=tuple(latent_hw), mode="area")[0]


def find_mask(image: Path, mask_dir: Path, subfolder: str = "") -> Path | None:
    """The file in ``mask_dir`` (or its ``subfolder``, for kohya "N_name" folders) with ``image``'s
    name and any image extension (kohya's glob_images(conditioning_data_dir, basename))."""
    for folder in ([mask_dir / subfolder] if subfolder else []) + [mask_dir]:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / (image.stem + ext), folder / (image.stem + ext.upper())):
                if candidate.is_file():
                    return candidate
    return None


def coverage(mask: Image.Image | None) -> float:
    """Share of the image that trains (mean mask value, 0..1); 1.0 for no mask."""
    return 1.0 if mask is None else float(np.asarray(mask, dtype=np.float32).mean() / 255.0)


def attach_masks(dataset, mask_dir, only=None):
    """``dataset`` with each item's mask file from ``mask_dir`` (see find_mask); ``only``: a test
    for which items to look up (default: all). Images without a mask file train whole
    (unmasked_note names them); a folder with no mask for any image stops (the wrong folder)."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise TrainerError(f"Mask folder not found: {mask_dir}. Point conditioning_data_dir (or the masks "
                           "folder) at a folder of masks named like the images.")
    items, missing, problems = [], [], []
    for item in dataset.items:
        if only is not None and not only(item):
            items.append(item)
            continue
        path = find_mask(Path(item.path), mask_dir, item.folder)
        if path is None:
            missing.append(Path(item.path).name)
        else:
            problems += size_problems(item, path)
        items.append(dataclasses.replace(item, mask=path) if path else item)
    if problems:
        raise TrainerError(f"{len(problems)} masks in {mask_dir} cannot be used: {'; '.join(problems[:10])}. "
                           "A mask must have its image's size (white = train, black = ignore).")
    looked = len(items) if only is None else sum(1 for item in dataset.items if only(item))
    if looked and len(missing) == looked:
        raise TrainerError(f"No mask in {mask_dir} matches an image (e.g. {missing[0]}): masks need the images' "
                           "file names (any image format), e.g. 001.png for 001.jpg.")
    return dataclasses.replace(dataset, items=items)


def size_problems(item, mask_path: Path) -> list[str]:
    """What keeps ``mask_path`` from being ``item``'s mask: unreadable, or not the image's size."""
    try:
        size = read_mask_file(mask_path).size
    except UnreadableImage as err:
        return [f"{mask_path.name}: {err.reason}"]
    if item.size != (0, 0) and tuple(size) != tuple(item.size):
        return [f"{mask_path.name} is {size[0]}x{size[1]}, its image {item.size[0]}x{item.size[1]}"]
    return []


def unmasked_note(dataset) -> str | None:
    """When some training images have a mask and others not: which train whole (never silently)."""
    train = [item for item in dataset.items if not item.is_reg]
    missing = [Path(item.path).name for item in train if item.mask is None]
    if not missing or len(missing) == len(train):
        return None
    return (f"{len(missing)} of {len(train)} images have no loss mask and train whole: " + ", ".join(missing[:8])
            + (" ..." if len(missing) > 8 else ""))


def masks_for_run(dataset, config):
    """The run's loss masks on the items, kohya's way: conditioning_data_dir (the config's for a
    train_data_dir, a subset's for a dataset_config, both with masked_loss), else alpha_mask (a
    subset's, else the config's). Masks already on items (from the graph) stay. masked_loss with
    no mask anywhere stops: kohya would train without one, silently."""
    from .subsets import subsets_of

    if config.masked_loss and config.conditioning_data_dir:
        dataset = attach_masks(dataset, config.conditioning_data_dir,
                               only=lambda it: it.subset is None and not it.is_reg and it.mask is None)
    for subset in subsets_of(dataset.items):
        if subset.conditioning_data_dir:
            dataset = attach_masks(dataset, subset.conditioning_data_dir,
                                   only=lambda it, s=subset: it.subset is s and it.mask is None)
    items = [dataclasses.replace(it, mask=ALPHA)
             if it.mask is None and (it.subset.alpha_mask if it.subset is not None else config.alpha_mask) else it
             for it in dataset.items]
    dataset = dataclasses.replace(dataset, items=items)
    if config.masked_loss and not any(it.mask is not None for it in items):
        raise TrainerError("masked_loss is on but no image has a mask: set conditioning_data_dir (a folder of masks "
                           "named like the images), alpha_mask = true (transparent = ignored), or connect masks to "
                           "Dataset Loader.")
    note = unmasked_note(dataset)
    return dataclasses.replace(dataset, notes=dataset.notes + [note]) if note else dataset
