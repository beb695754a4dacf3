"""Several datasets in one run from the graph (Dataset Merge), as kohya's dataset_config has them.

Each merged dataset becomes one kohya [[datasets]] (a DatasetPart) and each of its folders one
[[datasets.subsets]] (a Subset: its repeats, class tokens, regularization flag), so a merged
dataset is the same data model a dataset_config reads into (subsets.py). Per dataset the user
may set kohya's [[datasets]] / subset keys (resolution, batch_size, enable_bucket, shuffle_caption,
keep_tokens, flip_aug, is_reg, ...); what is left unset follows the run's settings (LoRA Train,
Training Options) exactly as kohya's cascade falls back to its command line. So the keys are
kept (``DatasetPart.given``) and turned into values when the run's config is known
(``resolve_parts``), by the same code that reads a dataset_config.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from ..errors import TrainerError
from .dataset import KOHYA_FOLDER, Dataset
from .kohya_dataset_schema import (DATASET_ASCENDABLE, DROPOUT_ASCENDABLE, SUBSET_ASCENDABLE, _check)
from .subsets import SAMPLE_FIELDS, DatasetPart, Subset, parts_of, subsets_of

# what a merged dataset may set: kohya's dataset and subset keys, except those its loader decides
MERGE_KEYS = {**DATASET_ASCENDABLE, **SUBSET_ASCENDABLE, **DROPOUT_ASCENDABLE, "is_reg": "bool", "alpha_mask": "bool"}
for _key in ("num_repeats", "custom_attributes"):  # repeats: the loader's widget / "N_name" folders
    MERGE_KEYS.pop(_key)


def parse_merge_settings(text: str, count: int) -> tuple[dict, list[dict]]:
    """Dataset Merge's settings: TOML, top-level keys for every dataset, ``[1]``, ``[2]`` ... for
    one; kohya's names. Returns (every dataset's, [each dataset's])."""
    try:
        values = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as err:
        raise TrainerError(f"Dataset Merge settings are not valid TOML ({err}): write [1] / [2] sections of "
                           "kohya keys, e.g. [2] then resolution = 512.") from None
    general = {k: v for k, v in values.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in values.items() if isinstance(v, dict)}
    for key in sections:
        if not key.isdigit() or not 1 <= int(key) <= count:
            raise TrainerError(f"Dataset Merge settings: section [{key}] names no connected dataset: use [1] to "
                               f"[{count}] (the inputs dataset_1 to dataset_{count}).")
    hint = " (repeats: the Dataset Loader's repeats widget or N_name folders)"
    _check(general, MERGE_KEYS, "Dataset Merge settings", hint)
    for key, table in sections.items():
        _check(table, MERGE_KEYS, f"Dataset Merge settings [{key}]", hint)
    return general, [sections.get(str(k), {}) for k in range(1, count + 1)]


def _folder_subsets(dataset: Dataset, part: DatasetPart, is_reg: bool | None) -> list:
    """The dataset's items, each pointing to its folder's Subset of ``part``."""
    subsets: dict[tuple, Subset] = {}
    items = []
    for item in dataset.items:
        folder = Path(item.path).parent
        reg = item.is_reg if is_reg is None else is_reg
        key = (str(folder), reg)
        if key not in subsets:
            match = KOHYA_FOLDER.match(folder.name)
            tokens = match.group(2).replace("_", " ").strip() if match else dataset.trigger
            subsets[key] = Subset(part, image_dir=str(folder), num_repeats=item.repeats, class_tokens=tokens or "",
                                  is_reg=reg)
        subset = subsets[key]
        subset.img_count += 1
        items.append(dataclasses.replace(item, subset=subset, is_reg=reg))
    return items


def merge_datasets(datasets: list[Dataset], settings: list[dict], general: dict | None = None) -> Dataset:
    """One Dataset of ``datasets``, each its own part with ``general`` + its ``settings`` (kohya keys).
    A dataset that already has parts (merged before, or a dataset_config) keeps them as they are."""
    items, notes = [], []
    for k, (dataset, own) in enumerate(zip(datasets, settings), 1):
        name = f"dataset {k} ({Path(dataset.root).name})"
        if parts_of(dataset.items):
            if own:
                raise TrainerError(f"Dataset Merge: {name} is merged already; set its keys on the Merge that "
                                   "joined it first.")
            items += dataset.items
        else:
            given = {**(general or {}), **own}
            part = DatasetPart((0, 0), name=name, given=given)
            items += _folder_subsets(dataset, part, given.get("is_reg"))
        notes += [f"{name}: {n}" for n in dataset.notes]
    if not any(not item.is_reg for item in items):
        raise TrainerError("Dataset Merge: every dataset is regularization (is_reg = true): keep at least one to "
                           "train on.")
    return Dataset(Path(datasets[0].root), items, notes)


def resolve_parts(dataset: Dataset, config) -> Dataset:
    """``dataset`` with every merged part's unset keys from ``config`` (kohya's cascade: the
    dataset's keys, else the run's option of the same name, else kohya's default). Parts read from
    a dataset_config are resolved already and stay; the items are new objects, the input is kept."""
    from .kohya_dataset_config import _Cascade, _check_caching, _part

    if not any(part.given is not None for part in parts_of(dataset.items)):
        return dataset
    notes: list[str] = []
    parts: dict[int, DatasetPart] = {}
    subsets: dict[int, Subset] = {}
    for subset in subsets_of(dataset.items):
        part = subset.part
        if part.given is None:
            continue
        get = _Cascade(config, part.given)
        if id(part) not in parts:
            parts[id(part)] = dataclasses.replace(_part(get, part.name, notes), given=part.given)
        values = {name: _typed(get(name, getattr(subset, name)), getattr(subset, name))
                  for name in (*SAMPLE_FIELDS, "alpha_mask")}
        subsets[id(subset)] = dataclasses.replace(subset, part=parts[id(part)], **values)
    items = [dataclasses.replace(item, subset=subsets[id(item.subset)])
             if item.subset is not None and id(item.subset) in subsets else item for item in dataset.items]
    _check_caching(items, config)
    return dataclasses.replace(dataset, items=items, notes=dataset.notes + notes)


def _typed(value, default):
    return default if value is None else type(default)(value)


def part_summary(dataset: Dataset) -> list[str]:
    """One line per part: its folders, images x repeats, regularization, the keys it sets."""
    lines = []
    for part in parts_of(dataset.items):
        subs = [s for s in subsets_of(dataset.items) if s.part is part]
        train = sum(s.img_count * s.num_repeats for s in subs if not s.is_reg)
        regs = sum(s.img_count for s in subs if s.is_reg)
        folders = ", ".join(f"{s.label} {s.img_count} x {s.num_repeats}" + (" (reg)" if s.is_reg else "")
                            for s in subs)
        keys = ", ".join(f"{k} = {v}" for k, v in (part.given or {}).items())
        lines.append(f"{part.name}: {folders} -> {train} samples per epoch"
                     + (f", {regs} regularization images" if regs else "") + (f"; {keys}" if keys else ""))
    return lines
