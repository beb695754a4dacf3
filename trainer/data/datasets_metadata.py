"""kohya's LoRA metadata for a run on several datasets (train_network.py, "use_user_config"):
ss_datasets (each dataset with its subsets), ss_dataset_dirs and ss_tag_frequency per subset."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .buckets import bucket_info
from .dataset import Dataset
from .subsets import Subset, parts_of, subsets_of


def _tags(captions) -> Counter:
    """kohya's set_tag_frequency: comma-separated, stripped, lower-cased."""
    return Counter(tag.strip().lower() for caption in captions for tag in caption.split(",") if tag.strip())


def _subset_entry(subset: Subset) -> dict:
    entry = {"img_count": subset.img_count, "num_repeats": subset.num_repeats,
             **{name: getattr(subset, name) for name in ("color_aug", "flip_aug", "random_crop", "shuffle_caption",
                                                         "keep_tokens", "keep_tokens_separator", "secondary_separator",
                                                         "enable_wildcard", "caption_prefix", "caption_suffix")},
             "resize_interpolation": subset.extra.get("resize_interpolation")}
    if subset.image_dir:
        entry["image_dir"] = Path(subset.image_dir).name
    if subset.metadata_file:
        entry["metadata_file"] = subset.label
    else:
        entry.update(class_tokens=subset.class_tokens or None, is_reg=subset.is_reg)
    return entry


def datasets_metadata(dataset: Dataset, buckets: dict | None) -> dict[str, str]:
    """{"ss_datasets", "ss_dataset_dirs", "ss_tag_frequency"} as kohya writes them for a dataset config."""
    counts = Counter(i for i, item in enumerate(dataset.items) if not item.is_reg for _ in range(item.repeats))
    counts.update(dataset.reg_sequence())  # regularization images: as often as the balancing uses them
    datasets, dirs, tag_frequency = [], {}, {}
    for part in parts_of(dataset.items):
        members = [i for i, item in enumerate(dataset.items) if item.subset is not None and item.subset.part is part]
        subsets = subsets_of(dataset.items[i] for i in members)
        frequency: dict[str, Counter] = {}
        for subset in subsets:
            own = Counter(subset.tag_counts) if subset.tag_counts is not None else \
                _tags(item.caption for item in dataset.items if item.subset is subset)
            frequency.setdefault(subset.label, Counter()).update(own)
        bucketed = [i for i in members if buckets and i in buckets]
        datasets.append({
            "is_dreambooth": not any(s.metadata_file for s in subsets),
            "batch_size_per_device": part.batch_size,
            "num_train_images": sum(counts[i] for i in members if not dataset.items[i].is_reg),
            "num_reg_images": sum(dataset.items[i].repeats for i in members if dataset.items[i].is_reg),
            "resolution": list(part.resolution),
            "enable_bucket": part.enable_bucket,
            "min_bucket_reso": part.min_bucket_reso if part.enable_bucket else None,
            "max_bucket_reso": part.max_bucket_reso if part.enable_bucket else None,
            "tag_frequency": {k: dict(v) for k, v in frequency.items()},
            "bucket_info": json.loads(bucket_info([buckets[i] for i in bucketed], [counts[i] for i in bucketed]))
            if bucketed else None,
            "resize_interpolation": None,
            "subsets": [_subset_entry(s) for s in subsets],
        })
        for subset in subsets:
            if not subset.is_reg:  # kohya lists training subsets only, a repeated name as "name (2)"
                name, n = subset.label, 2
                while name in dirs:
                    name, n = f"{subset.label} ({n})", n + 1
                dirs[name] = {"n_repeats": subset.num_repeats, "img_count": subset.img_count}
        for name, freq in frequency.items():
            tag_frequency.setdefault(name, dict(freq))  # a folder in several datasets counts once
    return {"ss_datasets": json.dumps(datasets, ensure_ascii=False), "ss_dataset_dirs": json.dumps(dirs),
            "ss_tag_frequency": json.dumps(tag_frequency, ensure_ascii=False)}
