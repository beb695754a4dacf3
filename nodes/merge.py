"""Dataset Merge: several datasets in one run, each with its own settings (kohya's dataset_config
[[datasets]] from the graph; trainer/data/merge.py)."""

from __future__ import annotations

DEFAULT_SETTINGS = """# kohya [[datasets]] keys per input; unset ones follow LoRA Train / Training Options
# [1]
# keep_tokens = 1
# [2]
# resolution = 512
# shuffle_caption = true
"""


class DatasetMerge:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "summary")
    FUNCTION = "merge"
    OUTPUT_NODE = True
    DESCRIPTION = ("Joins datasets for one run (a character and a style, several characters): each keeps its repeats, "
                   "trigger word, regularization images and masks, and may set its own resolution, buckets, batch "
                   "size and caption options, as kohya's dataset_config [[datasets]] do.")

    @classmethod
    def INPUT_TYPES(cls):
        tip = "From Dataset Loader (or Smart Crop, Caption Editor ...): becomes dataset {} in the settings."
        return {"required": {
            "dataset_1": ("LT_DATASET", {"tooltip": tip.format(1)}),
            "dataset_2": ("LT_DATASET", {"tooltip": tip.format(2)}),
            "settings": ("STRING", {"multiline": True, "default": DEFAULT_SETTINGS, "tooltip":
                         "TOML with kohya's names: keys before any section apply to every dataset, [1], [2] ... to "
                         "one (resolution, batch_size, enable_bucket, min/max_bucket_reso, shuffle_caption, "
                         "keep_tokens, caption_dropout_rate, flip_aug, is_reg, alpha_mask ...). Unset keys follow "
                         "LoRA Train and Training Options."}),
        }, "optional": {
            "dataset_3": ("LT_DATASET", {"tooltip": tip.format(3)}),
            "dataset_4": ("LT_DATASET", {"tooltip": tip.format(4)}),
        }}

    def merge(self, dataset_1, dataset_2, settings, dataset_3=None, dataset_4=None):
        from ..trainer.data.merge import merge_datasets, parse_merge_settings, part_summary

        datasets = [d for d in (dataset_1, dataset_2, dataset_3, dataset_4) if d is not None]
        general, own = parse_merge_settings(settings, len(datasets))
        merged = merge_datasets(datasets, own, general)
        summary = "\n".join([f"{len(datasets)} datasets, {merged.num_images} images, {merged.num_train_samples} "
                             "samples per epoch (x repeats)"] + part_summary(merged))
        return {"ui": {"text": [summary]}, "result": (merged, summary)}
