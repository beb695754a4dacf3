"""Several datasets in one run: kohya's dataset / subset structure as our data model.

A ``Dataset`` (dataset.py) is kohya's DatasetGroup: its items may point to a ``Subset`` (kohya's
[[datasets.subsets]]: a folder or metadata file with its repeats, class tokens, regularization
flag, caption and augmentation settings), and each subset to a ``DatasetPart`` (kohya's
[[datasets]]: the resolution, buckets and batch size its images train at). Items without a
subset (a plain train_data_dir, a manifest from before subsets) use the run's TrainConfig, as
before. Read by kohya_dataset_config.py (kohya's dataset TOML) and meant for a "Dataset Merge"
node (merge.py): each merged dataset becomes one part with its own subsets.

Items point to the objects themselves (not to indices), so a node that rebuilds a Dataset from
some of its items keeps every item's settings. The caption and augmentation fields carry
TrainConfig's names, so per-sample code reads ``settings_for(item, config)`` either way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(eq=False)  # identity: two parts with equal settings are still two kohya datasets
class DatasetPart:
    """One kohya [[datasets]] entry: every batch holds images of one part only."""

    resolution: tuple[int, int]  # (width, height)
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    name: str = ""  # how messages name it, e.g. "datasets 2"
    # Dataset Merge (merge.py): the kohya keys set in the graph, the rest following the run's settings
    # once known (merge.resolve_parts); None: every value above is final (a dataset_config's)
    given: dict | None = None


# a Subset's fields read per sample, under TrainConfig's names (caption_for, augmentation)
SAMPLE_FIELDS = ("shuffle_caption", "caption_separator", "keep_tokens", "keep_tokens_separator",
                 "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix",
                 "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                 "token_warmup_min", "token_warmup_step", "flip_aug", "color_aug", "random_crop")


@dataclass(eq=False)
class Subset:
    """One kohya [[datasets.subsets]] entry: where its images come from and how they train."""

    part: DatasetPart
    image_dir: str = ""
    metadata_file: str = ""  # kohya's fine-tuning JSON / JSONL: captions and tags per image
    num_repeats: int = 1
    class_tokens: str = ""  # the caption of images without a caption file
    is_reg: bool = False
    caption_extension: str = ".txt"
    # per sample (TrainConfig's names and meaning)
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str = ""
    enable_wildcard: bool = False
    caption_prefix: str = ""
    caption_suffix: str = ""
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0.0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    # masked loss (data/masks.py): the images' alpha channel, or a folder of masks named like them
    alpha_mask: bool = False
    conditioning_data_dir: str = ""
    # kohya's other subset keys, kept as given (kohya_dataset_config notes what they do not do here)
    extra: dict = field(default_factory=dict)
    img_count: int = 0  # images found (kohya's subset.img_count: metadata and reports)
    # fine-tuning subsets: kohya's ss_tag_frequency counts the metadata's tags, not the captions
    tag_counts: dict | None = None

    @property
    def label(self) -> str:
        """kohya's name for it in ss_dataset_dirs / ss_tag_frequency: the folder or metadata file name."""
        return Path(self.metadata_file or self.image_dir).name


class _SubsetView:
    """The config as ``subset`` changes it: SAMPLE_FIELDS from the subset, the rest from the config."""

    def __init__(self, subset: Subset, config):
        self._subset, self._config = subset, config

    def __getattr__(self, name: str):
        return getattr(self._subset if name in SAMPLE_FIELDS else self._config, name)


def settings_for(item, config):
    """What per-sample code reads for ``item`` under TrainConfig's names: its subset's caption and
    augmentation settings, everything else the run's config."""
    subset = getattr(item, "subset", None)
    return config if subset is None else _SubsetView(subset, config)


def parts_of(items) -> list[DatasetPart]:
    """The parts the items belong to, in order of first appearance; [] when no item has one."""
    seen: dict[int, DatasetPart] = {}
    for item in items:
        if item.subset is not None:
            seen.setdefault(id(item.subset.part), item.subset.part)
    return list(seen.values())


def subsets_of(items) -> list[Subset]:
    seen: dict[int, Subset] = {}
    for item in items:
        if item.subset is not None:
            seen.setdefault(id(item.subset), item.subset)
    return list(seen.values())


def kohya_reg_repeats(train_samples: int, reg_repeats: list[int]) -> list[int]:
    """How many times each regularization image trains per epoch (kohya's DreamBoothDataset):
    the first pass takes each image with its own repeats until the training samples are matched
    (images after that point are not used), later passes add one per image in turn. So the total
    equals the training samples, or exceeds them by less than one image's repeats."""
    counts = [0] * len(reg_repeats)
    done, first = 0, True
    while reg_repeats and done < train_samples:
        for k, repeats in enumerate(reg_repeats):
            counts[k] += repeats if first else 1
            done += repeats if first else 1
            if done >= train_samples:
                break
        first = False
    return counts


# -- the manifest's table (manifest.py): parts and subsets as JSON ---------------------------------
def table_to_json(subsets: list[Subset]) -> dict:
    parts = list({id(s.part): s.part for s in subsets}.values())
    index = {id(p): k for k, p in enumerate(parts)}
    return {"parts": [dataclasses.asdict(p) for p in parts],
            "subsets": [{f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "part"}
                        | {"part": index[id(s.part)]} for s in subsets]}


def table_from_json(table: dict) -> list[Subset]:
    parts = [DatasetPart(**(p | {"resolution": tuple(p["resolution"])})) for p in table.get("parts", [])]
    return [Subset(**(s | {"part": parts[s["part"]]})) for s in table.get("subsets", [])]
