"""A dataset exactly as a graph prepared it, as one JSON-lines file the CLI can train from.

Captions edited in memory, Smart Crop files with their source sizes, regularization images and
repeats all survive the trip, so ``python -m trainer train`` (or torchrun / accelerate launch)
trains on what the LoRA Train node would have trained on. One line per image:

    {"path": "/abs/img.png", "caption": "...", "repeats": 10, "folder": "10_x", "is_reg": false,
     "size": [w, h], "source_size": [h, w] | null, "source_crop": [top, left] | null}

with "mask": "/abs/mask.png" or "alpha" for an image with a loss mask (data/masks.py).

Items of kohya subsets (several datasets, data/subsets.py) add "subset": k, an index into a
first line {"subsets": [...], "parts": [...]} holding each subset's and dataset's settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text
from ..errors import TrainerError
from .dataset import Dataset, ImageItem
from .masks import ALPHA
from .subsets import subsets_of, table_from_json, table_to_json

FIELDS = ("caption", "repeats", "folder", "is_reg", "size", "source_size", "source_crop")


def write_manifest(dataset: Dataset, path) -> Path:
    subsets = subsets_of(dataset.items)
    index = {id(s): k for k, s in enumerate(subsets)}
    lines = [json.dumps(table_to_json(subsets), ensure_ascii=False)] if subsets else []
    lines += [json.dumps({"path": str(Path(item.path).resolve()), **{f: getattr(item, f) for f in FIELDS},
                          **({"subset": index[id(item.subset)]} if item.subset is not None else {}),
                          **({"mask": _mask_text(item.mask)} if item.mask is not None else {})},
                         ensure_ascii=False) for item in dataset.items]
    return write_text(path, "\n".join(lines) + "\n")


def _mask_text(mask) -> str:
    return mask if mask == ALPHA else str(Path(mask).resolve())


def _tuple(value):
    return None if value is None else tuple(value)


def _mask_path(value):
    return None if not value else ALPHA if value == ALPHA else Path(value)


def read_manifest(path) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"dataset_manifest {path} not found: write it with the LoRA Train node or point "
                           "train_data_dir at the image folder instead.")
    items, missing, missing_masks, subsets = [], [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "subsets" in row and "path" not in row:
                subsets = table_from_json(row)
                continue
            item = ImageItem(Path(row["path"]), row["caption"], int(row["repeats"]), row.get("folder", ""),
                             bool(row.get("is_reg", False)), _tuple(row.get("size", (0, 0))),
                             _tuple(row.get("source_size")), _tuple(row.get("source_crop")),
                             subsets[row["subset"]] if row.get("subset") is not None else None,
                             _mask_path(row.get("mask")))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise TrainerError(f"{path} line {number} is not a dataset entry ({err}).") from None
        if not item.path.is_file():
            missing.append(item.path)
        elif item.mask not in (None, ALPHA) and not Path(item.mask).is_file():
            missing_masks.append(Path(item.mask))
        else:
            items.append(item)
    for files, what in ((missing, "images"), (missing_masks, "loss masks")):
        if files:
            raise TrainerError(f"{len(files)} {what} listed in {path} are missing, first {files[0]}: copy the "
                               "dataset to this machine with the same paths, or edit the paths in the file.")
    if not items:
        raise TrainerError(f"{path} lists no images.")
    return Dataset(path.parent, items, [f"dataset from {path.name}"])
