"""kohya's dataset-config schema (library/config_util.py): which keys may stand where, of
which kind, and the validation that refuses the others naming the allowed ones."""

from __future__ import annotations

import difflib

from ..errors import TrainerError

SUBSET_ASCENDABLE = {
    "color_aug": "bool", "face_crop_aug_range": "float_pair", "flip_aug": "bool", "num_repeats": "int",
    "random_crop": "bool", "shuffle_caption": "bool", "keep_tokens": "int", "keep_tokens_separator": "str",
    "secondary_separator": "str", "caption_separator": "str", "enable_wildcard": "bool",
    "token_warmup_min": "int", "token_warmup_step": "number", "caption_prefix": "str", "caption_suffix": "str",
    "custom_attributes": "dict", "resize_interpolation": "str",
}
DROPOUT_ASCENDABLE = {"caption_dropout_every_n_epochs": "int", "caption_dropout_rate": "number",
                      "caption_tag_dropout_rate": "number"}
DB_SUBSET_ASCENDABLE = {"caption_extension": "str", "class_tokens": "str", "cache_info": "bool"}
DB_SUBSET_DISTINCT = {"image_dir": "str", "is_reg": "bool", "alpha_mask": "bool"}
FT_SUBSET_DISTINCT = {"metadata_file": "str", "image_dir": "str", "alpha_mask": "bool"}
CN_SUBSET_ASCENDABLE = {"caption_extension": "str", "cache_info": "bool"}
CN_SUBSET_DISTINCT = {"image_dir": "str", "conditioning_data_dir": "str"}
DATASET_ASCENDABLE = {
    "batch_size": "int", "bucket_no_upscale": "bool", "bucket_reso_steps": "int", "enable_bucket": "bool",
    "max_bucket_reso": "int", "min_bucket_reso": "int", "validation_seed": "int", "validation_split": "number",
    "resolution": "reso", "network_multiplier": "number", "resize_interpolation": "str",
}

# the keys kohya's command-line options answer for when the file leaves them out: our TrainConfig
# fields of the same name (kohya's argparse has no class_tokens, image_dir, is_reg ...)
CONFIG_NAMES = {"num_repeats": "dataset_repeats", "batch_size": "train_batch_size"} | {name: name for name in (
    "shuffle_caption", "caption_separator", "keep_tokens", "keep_tokens_separator", "secondary_separator",
    "enable_wildcard", "color_aug", "flip_aug", "random_crop", "caption_prefix", "caption_suffix",
    "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "token_warmup_min",
    "token_warmup_step", "caption_extension", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
    "bucket_reso_steps", "bucket_no_upscale", "alpha_mask", "conditioning_data_dir")}

# accepted as kohya does, but without effect here: (key, value that is no change) -> why
NO_EFFECT = {
    "face_crop_aug_range": (None, "face crop augmentation is not implemented here (images crop from the centre, "
                                  "or randomly with random_crop)"),
    "custom_attributes": (None, "custom_attributes are for kohya's custom dataset code; nothing here reads them"),
    "resize_interpolation": (None, "images are resized with Lanczos here"),
    "cache_info": (False, "image sizes are read at start here (cache_info only speeds up kohya's start)"),
    "network_multiplier": (1.0, "a per-dataset network_multiplier is not supported here: every batch trains "
                                "the LoRA at multiplier 1"),
    "validation_split": (0.0, "per-dataset validation_split is not supported here: set validation_split in the "
                              "training config (it holds out images of every dataset)"),
    "validation_seed": (None, "validation_seed: the training config's seed chooses the held-out images here"),
}

KINDS = {"bool": "true or false", "int": "a whole number", "number": "a number", "str": "a string in quotes",
         "float_pair": "two numbers, e.g. [0.3, 0.7]", "reso": "a size such as 512 or [512, 768]",
         "dict": "a table"}


def _kind_ok(kind: str, value) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return number
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "float_pair":
        return isinstance(value, list) and len(value) == 2 and all(_kind_ok("number", v) for v in value)
    if kind == "reso":
        return _kind_ok("int", value) or (isinstance(value, list) and len(value) == 2
                                         and all(_kind_ok("int", v) for v in value))
    raise AssertionError(kind)


def _check(table: dict, allowed: dict, where: str, hint: str = "") -> None:
    """kohya's schema: only ``allowed`` keys, each of its kind."""
    for key, value in table.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            guess = f" (did you mean '{close[0]}'?)" if close else ""
            raise TrainerError(f"{where}: unknown key '{key}'{guess}{hint}. Allowed here: "
                               f"{', '.join(sorted(allowed))}.")
        kind = allowed[key]
        if kind != "table_list" and not _kind_ok(kind, value):
            raise TrainerError(f"{where}: {key} = {value!r} must be {KINDS[kind]}.")


def _merge(*tables: dict) -> dict:
    out: dict = {}
    for table in tables:
        out.update(table)
    return out


def _list_of_tables(value, where: str, name: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TrainerError(f"{where}: '{name}' must be a list of tables: write [[{name}]] sections.")
    return value


def _subset_schema(kind: str) -> dict:
    if kind == "db":
        return _merge(SUBSET_ASCENDABLE, DB_SUBSET_DISTINCT, DB_SUBSET_ASCENDABLE, DROPOUT_ASCENDABLE)
    if kind == "ft":
        return _merge(SUBSET_ASCENDABLE, FT_SUBSET_DISTINCT, DROPOUT_ASCENDABLE)
    return _merge(SUBSET_ASCENDABLE, CN_SUBSET_DISTINCT, CN_SUBSET_ASCENDABLE, DROPOUT_ASCENDABLE)


def _dataset_schema(kind: str) -> dict:
    own = {"db": DB_SUBSET_ASCENDABLE, "ft": {}, "cn": CN_SUBSET_ASCENDABLE}[kind]
    return _merge(DATASET_ASCENDABLE, SUBSET_ASCENDABLE, own, DROPOUT_ASCENDABLE, {"subsets": "table_list"})


def _dataset_kind(subsets: list[dict], masked_loss: bool, where: str) -> str:
    """kohya's validate_flex_dataset: conditioning (with masked_loss), fine-tuning or DreamBooth."""
    if masked_loss and all("conditioning_data_dir" in s for s in subsets):
        return "cn"
    if all("metadata_file" in s for s in subsets):
        return "ft"
    if all("metadata_file" not in s for s in subsets):
        return "db"
    raise TrainerError(f"{where}: subsets with metadata_file (fine-tuning) and subsets without it (image_dir "
                       "with caption files) cannot be mixed in one dataset: put them in separate [[datasets]].")


def validate(user: dict, masked_loss: bool = False, source: str = "dataset_config") -> None:
    """kohya's sanitize_user_config, with messages that name the key and what is allowed."""
    _check(user, {"general": "dict", "datasets": "table_list"}, source)
    general_schema = _merge(DATASET_ASCENDABLE, SUBSET_ASCENDABLE, DB_SUBSET_ASCENDABLE,
                            CN_SUBSET_ASCENDABLE if masked_loss else {}, DROPOUT_ASCENDABLE)
    _check(user.get("general", {}), general_schema, f"{source} [general]",
           " (image_dir, metadata_file and is_reg belong to [[datasets.subsets]])")
    for d, dataset in enumerate(_list_of_tables(user.get("datasets", []), source, "datasets"), 1):
        where = f"{source} [[datasets]] {d}"
        subsets = _list_of_tables(dataset.get("subsets", []), where, "datasets.subsets")
        kind = _dataset_kind(subsets, masked_loss, where)
        hint = {"ft": " (a dataset of metadata_file subsets takes no caption_extension/class_tokens)"}.get(kind, "")
        _check(dataset, _dataset_schema(kind), where, hint)
        for s, subset in enumerate(subsets, 1):
            hint = {"ft": " (metadata_file subsets take captions from the file: no is_reg, class_tokens or "
                          "caption_extension)",
                    "db": " (conditioning_data_dir needs masked_loss)" if "conditioning_data_dir" in subset else ""}
            _check(subset, _subset_schema(kind), f"{where} [[datasets.subsets]] {s}", hint.get(kind, ""))
            needed = {"db": "image_dir", "ft": "metadata_file", "cn": "image_dir"}[kind]
            if needed not in subset:
                raise TrainerError(f"{where} [[datasets.subsets]] {s}: {needed} is required "
                                   f"(the folder of images{' or metadata file' if kind == 'ft' else ''} to train on).")
