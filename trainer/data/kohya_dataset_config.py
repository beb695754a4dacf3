"""kohya's dataset config (``dataset_config = "dataset.toml"``) read into our Dataset.

    [general]                  defaults for every dataset and subset
    [[datasets]]               resolution, batch_size, enable_bucket, min/max_bucket_reso, ...
      [[datasets.subsets]]     image_dir + num_repeats, class_tokens, is_reg, caption settings ...
      [[datasets.subsets]]     metadata_file (kohya's fine-tuning JSON) [+ image_dir]

The meaning is kohya-ss/sd-scripts' (library/config_util.py, train_util.py): each value is taken
from the subset, else its dataset, else [general], else the training config's option of the
same name (kohya's argparse; ``num_repeats`` <- dataset_repeats, ``batch_size`` <- train_batch_size),
else kohya's default. A key kohya's schema does not allow where it stands is refused, naming the
allowed ones; so are DreamBooth and fine-tuning subsets mixed in one dataset. Keys kohya accepts
that do nothing here are accepted with a note. Each dataset becomes a DatasetPart (its own
resolution, buckets and batch size), each subset a Subset its items point to (subsets.py).

Paths (image_dir, metadata_file) relative to the dataset config's folder, else to the working
directory (kohya's). Differences from kohya: a missing caption_extension falls back to the
training config's (".txt" here, kohya's ".caption"); an empty caption file trains with the class
tokens (kohya stops); fine-tuning image keys without an extension find the image beside them.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

from ..errors import TrainerError
from .dataset import Dataset, ImageItem, _Checks, _scan
from .images import IMAGE_EXTENSIONS
from .kohya_dataset_schema import CONFIG_NAMES, NO_EFFECT, validate
from .subsets import DatasetPart, Subset

# kohya's ConfigSanitizer schema: key -> kind
def read_config_file(path: Path) -> dict:
    """kohya's load_user_config: a .toml or .json file."""
    if not path.is_file():
        raise TrainerError(f"dataset_config {path} not found: give the path of kohya's dataset .toml "
                           "(relative to the training config's folder or the working directory).")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(path.read_text(encoding="utf-8"))
        if suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrainerError(f"dataset_config {path} cannot be read: {err}") from None
    raise TrainerError(f"dataset_config {path}: kohya's dataset config is a .toml (or .json) file.")


class _Cascade:
    """kohya's generate_params_by_fallbacks: subset, dataset, [general], the training config."""

    def __init__(self, config, *layers: dict):
        self.config, self.layers = config, layers

    def __call__(self, key: str, default=None):
        value = self.in_file(key)
        if value is None and key == "resolution":
            value = self.config.size()
        elif value is None and key in CONFIG_NAMES:
            value = getattr(self.config, CONFIG_NAMES[key], None)
        return default if value is None else value

    def in_file(self, key: str):
        return next((layer[key] for layer in self.layers if layer.get(key) is not None), None)


def _resolution(value, bucketing: bool, where: str, notes: list[str]) -> tuple[int, int]:
    """Multiples of 64 (TrainConfig.size's rule): with buckets another size only gives the area, so
    it rounds down (kohya trains "512,650" that way)."""
    values = [value, value] if isinstance(value, int) else [int(value[0]), int(value[1])]
    for i, v in enumerate(values):
        lo, hi = v // 64 * 64, (v // 64 + 1) * 64
        if v % 64 and bucketing and lo:
            notes.append(f"{where}: resolution {v} is not a multiple of 64; the buckets use {lo}")
            values[i] = lo
        elif v <= 0 or v % 64:
            raise TrainerError(f"{where}: resolution {v} is not a positive multiple of 64: use {max(lo, 64)} or {hi}.")
    return values[0], values[1]


def _part(get: _Cascade, where: str, notes: list[str]) -> DatasetPart:
    """One [[datasets]]: kohya's DreamBoothDataset/FineTuningDataset size settings, checked as kohya does."""
    resolution = _resolution(get("resolution"), bool(get("enable_bucket", False)), where, notes)
    part = DatasetPart(resolution, int(get("batch_size", 1)), bool(get("enable_bucket", False)),
                       int(get("min_bucket_reso", 256)), int(get("max_bucket_reso", 1024)),
                       int(get("bucket_reso_steps", 64)), bool(get("bucket_no_upscale", False)), where)
    if part.batch_size < 1:
        raise TrainerError(f"{where}: batch_size must be at least 1 (got {part.batch_size}).")
    if part.enable_bucket:
        step = part.bucket_reso_steps
        if step < 8 or step % 8:
            raise TrainerError(f"{where}: bucket_reso_steps must be a multiple of 8 (got {step}); 64 is kohya's.")
        if part.min_bucket_reso % step:  # kohya rounds these to the step, with a warning
            notes.append(f"{where}: min_bucket_reso {part.min_bucket_reso} rounded down to a multiple of {step}")
            part.min_bucket_reso -= part.min_bucket_reso % step
        if part.max_bucket_reso % step:
            notes.append(f"{where}: max_bucket_reso {part.max_bucket_reso} rounded up to a multiple of {step}")
            part.max_bucket_reso += step - part.max_bucket_reso % step
        if min(resolution) < part.min_bucket_reso:
            raise TrainerError(f"{where}: min_bucket_reso {part.min_bucket_reso} is above the resolution's shorter "
                               f"side {min(resolution)}: lower min_bucket_reso or raise the resolution.")
        if max(resolution) > part.max_bucket_reso:
            raise TrainerError(f"{where}: max_bucket_reso {part.max_bucket_reso} is below the resolution's longer "
                               f"side {max(resolution)}: raise max_bucket_reso or lower the resolution.")
    return part


def _path(value: str, base: Path) -> Path:
    """The dataset config's folder first, then the working directory (kohya's)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return base / path if (base / path).exists() else path


def _subset(part: DatasetPart, get: _Cascade, base: Path) -> Subset:
    extension = str(get("caption_extension", ".caption"))
    image_dir, metadata = get("image_dir"), get("metadata_file")
    subset = Subset(
        part, str(_path(image_dir, base)) if image_dir else "", str(_path(metadata, base)) if metadata else "",
        int(get("num_repeats", 1)), get("class_tokens") or "", bool(get("is_reg", False)),
        extension if not extension or extension.startswith(".") else "." + extension,
        alpha_mask=bool(get("alpha_mask", False)),
        conditioning_data_dir=str(_path(get("conditioning_data_dir"), base)) if get("conditioning_data_dir") else "")
    for name in ("shuffle_caption", "caption_separator", "keep_tokens", "keep_tokens_separator",
                 "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix",
                 "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                 "token_warmup_min", "token_warmup_step", "flip_aug", "color_aug", "random_crop"):
        default = getattr(subset, name)
        value = get(name, default)
        setattr(subset, name, type(default)(value) if value is not None else default)
    subset.extra = {key: get.in_file(key) for key in ("face_crop_aug_range", "custom_attributes",
                                                      "resize_interpolation", "cache_info", "validation_seed",
                                                      "validation_split", "network_multiplier")
                    if get.in_file(key) is not None}
    return subset


def _dreambooth_items(subset: Subset, checks: _Checks) -> list[ImageItem]:
    """kohya's load_dreambooth_dir: the folder's images, each with its caption file's first line
    (every non-empty line with enable_wildcard), else the class tokens."""
    folder = Path(subset.image_dir)
    items = _scan(folder, subset.num_repeats, folder.name, subset.class_tokens, subset.caption_extension or ".txt",
                  checks)
    for item in items:
        lines = [line.strip() for line in item.caption.split("\n")]
        item.caption = "\n".join(line for line in lines if line) if subset.enable_wildcard else lines[0]
        item.is_reg, item.subset = subset.is_reg, subset
    return items


def _metadata_entries(path: Path) -> dict:
    """kohya's fine-tuning metadata: JSON {image_key: {"caption", "tags", ...}} or JSONL lines with
    "image_path"."""
    try:
        if path.suffix.lower() == ".jsonl":
            entries = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    entries[row["image_path"]] = {k: row[k] for k in ("caption", "tags", "image_size") if k in row}
            return entries
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainerError(f"metadata_file {path} not found: give the path of kohya's fine-tuning JSON.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise TrainerError(f"metadata_file {path} is not kohya's fine-tuning metadata ({err}): expected "
                           '{"image.png": {"caption": "...", "tags": "..."}}.') from None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise TrainerError(f'metadata_file {path}: expected {{"image.png": {{"caption": "...", "tags": "..."}}}}.')
    return entries


def _image_for(key: str, image_dir: str, metadata: Path) -> Path | None:
    if not Path(key).is_absolute() and not image_dir:
        raise TrainerError(f"metadata_file {metadata}: image '{key}' is a relative path, so the subset needs "
                           "image_dir (the folder the names are relative to).")
    path = Path(key) if Path(key).is_absolute() else Path(image_dir) / key
    if path.is_file():
        return path
    # kohya's merge scripts write keys without the extension
    return next((path.with_name(path.name + ext) for ext in IMAGE_EXTENSIONS
                 if path.with_name(path.name + ext).is_file()), None)


def _finetuning_items(subset: Subset, checks: _Checks) -> list[ImageItem]:
    """kohya's FineTuningDataset: caption + caption_separator + tags from the metadata file; the
    tag frequency counts the tags only."""
    path = Path(subset.metadata_file)
    entries = _metadata_entries(path)
    items, missing, tags_seen = [], [], []
    sep = subset.caption_separator
    for key, entry in entries.items():
        image = _image_for(key, subset.image_dir, path)
        if image is None:
            missing.append(key)
            continue
        caption, tags = entry.get("caption") or "", entry.get("tags")
        if subset.enable_wildcard:
            if tags is not None:
                tags = tags.replace("\n", sep)
                caption = "\n".join(f"{line}{sep}{tags}" for line in caption.split("\n") if line.strip())
        elif tags:
            caption = (caption + sep if caption else "") + tags
        if tags:
            tags_seen.append(tags)
        items.append(ImageItem(image, caption, subset.num_repeats, path.name, size=checks.image_size(image),
                               subset=subset))
    if missing:
        raise TrainerError(f"metadata_file {path}: {len(missing)} images not found, first '{missing[0]}' (looked in "
                           f"{subset.image_dir or 'its absolute path'}): fix image_dir or the file's keys.")
    subset.tag_counts = dict(Counter(t.strip().lower() for tags in tags_seen
                                                 for t in tags.split(",") if t.strip()))
    return items


def load_dataset_config(path, config) -> Dataset:
    """kohya's dataset config at ``path`` as a Dataset whose items point to their subsets; ``config``
    (a TrainConfig) answers for what the file leaves out, as kohya's command-line options do."""
    path = Path(path)
    return dataset_from_user_config(read_config_file(path), config, path.resolve().parent, str(path))


def dataset_from_user_config(user: dict, config, base: Path, source: str = "dataset_config") -> Dataset:
    """The same from the config's dict (kohya builds one for train_data_dir + in_json, too);
    relative paths from ``base``, then the working directory."""
    validate(user, bool(getattr(config, "masked_loss", False)), Path(source).name)
    notes: list[str] = []
    checks = _Checks(notes)
    general, items = user.get("general", {}), []
    for d, dataset in enumerate(user.get("datasets", []), 1):
        where = f"[[datasets]] {d}"
        part = _part(_Cascade(config, dataset, general), where, notes)
        seen = set()
        for s, table in enumerate(dataset.get("subsets", []), 1):
            subset = _subset(part, _Cascade(config, table, dataset, general), base)
            name = f"{where} subset {s} ({subset.metadata_file or subset.image_dir})"
            _note_no_effect(subset, name, notes)
            key = subset.metadata_file or subset.image_dir
            if subset.num_repeats < 1:
                notes.append(f"ignored {name}: num_repeats is {subset.num_repeats}")
                continue
            if key in seen:  # kohya: a subset equal to an earlier one (same folder / file) is ignored
                notes.append(f"ignored {name}: the same {'metadata_file' if subset.metadata_file else 'image_dir'} "
                             "as an earlier subset of this dataset")
                continue
            if not subset.metadata_file and not Path(subset.image_dir).is_dir():
                notes.append(f"ignored {name}: image_dir is not a folder")
                continue
            found = _finetuning_items(subset, checks) if subset.metadata_file else _dreambooth_items(subset, checks)
            if not found:
                notes.append(f"ignored {name}: no images found")
                continue
            seen.add(key)
            subset.img_count = len(found)
            items += found
    checks.raise_if_any(base)
    if not any(not item.is_reg for item in items):
        ignored = "; ".join(n for n in notes if n.startswith("ignored"))
        raise TrainerError(f"No training images in {source}: every subset is empty, ignored or regularization"
                           f"{f' ({ignored})' if ignored else ''}; check image_dir / metadata_file paths.")
    _check_caching(items, config)
    return Dataset(base, items, notes)


def _note_no_effect(subset: Subset, name: str, notes: list[str]) -> None:
    for key, (unchanged, why) in NO_EFFECT.items():
        if subset.extra.get(key) not in (None, unchanged):
            notes.append(f"{name}: {why}")


def _check_caching(items: list[ImageItem], config) -> None:
    """TrainConfig.validate's caching rules, per subset (kohya: is_latent_cacheable and
    is_text_encoder_output_cacheable of every dataset)."""
    for subset in {id(i.subset): i.subset for i in items if i.subset is not None}.values():
        where = f"{subset.part.name} subset {subset.metadata_file or subset.image_dir}"
        if config.cache_latents and (subset.flip_aug or subset.color_aug or subset.random_crop):
            raise TrainerError(f"{where}: cache_latents encodes each image once, so flip_aug, color_aug and "
                               "random_crop cannot vary it: turn caching or the subset's augmentation off.")
        if config.cache_text_encoder_outputs and (subset.shuffle_caption or subset.caption_dropout_rate
                                                  or subset.caption_tag_dropout_rate or subset.token_warmup_step):
            raise TrainerError(f"{where}: cache_text_encoder_outputs encodes each caption once, so shuffle_caption, "
                               "caption (tag) dropout and token warmup cannot work with it: turn one of them off.")
