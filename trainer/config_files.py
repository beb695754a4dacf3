"""Settings files into a TrainConfig: a kohya TOML, a kohya_ss GUI .json, and the CLI's --set pairs.

Read with kohya's meaning: a relative dataset_config beside the file, max_train_epochs over
max_train_steps when a file sets both, and the text encoder trained unless the file says
otherwise. The TrainConfig itself (config.py) knows nothing of files."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

from .config import TrainConfig
from .errors import TrainerError
from .kohya_gui import gui_to_kohya, is_gui_config, read_gui_json
from .kohya_options import epochs_over_steps
from .settings_file import read_settings


def config_from_toml(path) -> TrainConfig:
    path = Path(path)
    values = read_settings(path, tomllib.loads, (tomllib.TOMLDecodeError,), "TOML")
    values = epochs_over_steps(values, str(path))
    return TrainConfig.from_dict(kohya_text_encoder_default(_paths_beside(values, path.parent)), source=str(path),
                                 base_dir=path.parent)


def config_from_file(path) -> TrainConfig:
    """A kohya TOML, or a .json: a kohya_ss GUI preset / saved config (its own keys, mapped as
    the GUI maps them) or a flat dict of kohya names."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return config_from_toml(path)
    values = read_gui_json(path)
    if is_gui_config(values):
        values = gui_to_kohya(values, source=str(path))
    return TrainConfig.from_dict(kohya_text_encoder_default(_paths_beside(values, path.parent)), source=str(path),
                                 base_dir=path.parent)


def _paths_beside(values: dict, folder: Path) -> dict:
    """A relative dataset_config (or conditioning_data_dir) names a file beside the config when there
    is one there, else one in the working directory (kohya's only place)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _paths_beside(value, folder)
        elif key in ("dataset_config", "conditioning_data_dir") and value and isinstance(value, str) \
                and not Path(value).expanduser().is_absolute() and (folder / value).exists():
            value = str(folder / value)
        out[key] = value
    return out


def kohya_text_encoder_default(values: dict) -> dict:
    """kohya trains the text encoder(s) unless ``network_train_unet_only``, at ``text_encoder_lr`` or
    else ``learning_rate``: a kohya file saying neither gets that meaning here too."""
    flat = {k: v for section in values.values() if isinstance(section, dict) for k, v in section.items()}
    flat.update({k: v for k, v in values.items() if not isinstance(v, dict)})
    if flat.get("network_train_unet_only") or "text_encoder_lr" in flat or flat.get("network_train_text_encoder_only"):
        return values
    warnings.warn("note: no network_train_unet_only and no text_encoder_lr: the text encoder(s) train at "
                  "learning_rate, as kohya does (set network_train_unet_only = true for a UNet-only LoRA)", stacklevel=3)
    return {**values, "text_encoder_lr": flat.get("learning_rate", TrainConfig.learning_rate)}


def parse_overrides(pairs: list[str]) -> dict:
    """The CLI's ``--set key=value`` pairs, values read as TOML (plain strings otherwise)."""
    values = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise TrainerError(f"--set {pair}: write key=value, e.g. --set network_dim=8")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    return values
