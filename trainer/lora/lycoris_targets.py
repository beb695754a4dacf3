"""Which modules a LyCORIS preset puts an adapter on, at which rank and alpha.

The same walk LyCORIS's kohya network does over the model: every Linear / Conv2d inside a module
whose class the preset names (``unet_target_module``), plus the modules whose path matches one of
its ``unet_target_name`` patterns (``re.match``); Linear and 1x1 conv at network_dim/alpha, larger
convs at conv_dim/conv_alpha when the preset enables convs. The preset data comes from LyCORIS
itself (``lycoris.config.PRESET``) or a preset file LyCORIS reads.

Two differences, both on purpose:
* a module reached twice (LyCORIS's ``full`` names ``time_embedding.linear_1`` and also lists the
  ``TimestepEmbedding`` class holding it) gets one adapter; kohya + LyCORIS stops there with
  "duplicated lora name".
* SDXL: kohya trains its own SDXL UNet, whose time/label embeddings are plain Sequentials with LDM
  names, so no ``TimestepEmbedding`` class and no ``conv_in``/``time_embedding`` names exist there.
  The walk does the same on diffusers' SDXL UNet (names matched in LDM naming) so the files agree.
"""

from __future__ import annotations

import fnmatch
import re

import torch

from ..errors import TrainerError

_WRAPPER_PARTS = (".lora_A", ".lora_B", ".lora_embedding", ".lora_magnitude")


def preset_dict(preset: str) -> dict:
    """A builtin LyCORIS preset by name, or a LyCORIS preset file."""
    from lycoris.config import PRESET

    if preset in PRESET:
        return PRESET[preset]
    from lycoris.utils.preset import read_preset

    data = read_preset(preset)
    if data is None:
        raise TrainerError(f"network_args preset={preset}: LyCORIS could not read this preset file "
                           "(see the message above); fix it or use a builtin preset such as attn-mlp.")
    mapped = [k for k in ("module_algo_map", "name_algo_map") if data.get(k)]
    if mapped:
        raise TrainerError(f"preset {preset}: {mapped[0]} (a different algorithm per module) is not trained here; "
                           "remove it from the preset.")
    return data


def _matcher(preset: dict):
    if preset.get("use_fnmatch"):
        return lambda pattern, name: fnmatch.fnmatch(name, pattern)
    return lambda pattern, name: re.match(pattern, name) is not None


def _rank_of(module, dim: int, alpha: float, conv_dim: int, conv_alpha: float) -> tuple[int, float] | None:
    if isinstance(module, torch.nn.Linear):
        return (dim, alpha) if dim > 0 else None
    if isinstance(module, torch.nn.Conv2d):
        if module.kernel_size[0] == 1 and dim > 0:
            return dim, alpha
        return (conv_dim, conv_alpha) if conv_dim > 0 else None
    return None


def preset_targets(root, preset: dict, part: str, dim: int, alpha: float, conv_dim: int, conv_alpha: float,
                   name_of=None, skip_classes=()) -> dict[str, tuple[int, float]]:
    """{path in ``root``: (rank, alpha)} for ``part`` ("unet" or "text_encoder") of ``preset``, in
    the model's module order. ``name_of(path)`` is the name the preset's name patterns see (LDM
    naming for SDXL); ``skip_classes`` are class names the reference model does not have."""
    classes = [c for c in preset.get(f"{part}_target_module", []) if c not in skip_classes]
    names = preset.get(f"{part}_target_name", [])
    excluded = preset.get("exclude_name", [])
    match = _matcher(preset)
    if not preset.get("enable_conv", True):
        conv_dim = 0
    name_of = name_of or (lambda path: path)
    out: dict[str, tuple[int, float]] = {}

    def add(path: str, module) -> None:
        path = path.removesuffix(".base_layer")
        if any(w in path for w in _WRAPPER_PARTS) or path in out:
            return
        rank = _rank_of(module, dim, alpha, conv_dim, conv_alpha)
        if rank:
            out[path] = rank

    def is_excluded(path: str) -> bool:
        return bool(path) and any(path == t or match(t, path) for t in excluded)

    for path, module in root.named_modules():
        if is_excluded(path):
            continue
        seen = name_of(path)
        if type(module).__name__ in classes and not any(match(t, seen) for t in names):
            for child_path, child in module.named_modules():
                full = f"{path}.{child_path}" if child_path else path
                if not is_excluded(full):
                    add(full, child)
        elif seen and (seen in names or any(match(t, seen) for t in names)):
            add(path, module)
    return out
