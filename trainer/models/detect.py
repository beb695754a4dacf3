"""Which family a model on disk belongs to, from its configs (folders) or its keys (files)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TrainerError


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def detect_folder_family(folder: Path) -> str:
    folder = Path(folder)
    unet = _read_json(folder / "unet" / "config.json")
    text = _read_json(folder / "text_encoder" / "config.json")
    if not unet:
        raise TrainerError(
            f"{folder} is not a diffusers model folder: unet/config.json is missing. Point to the "
            "folder that holds model_index.json, unet/, vae/ and text_encoder/.")
    if text.get("model_type") == "chatglm" or unet.get("encoder_hid_dim_type") == "text_proj":
        return "kolors"
    if (folder / "text_encoder_2").is_dir() or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd15"


def detect_checkpoint_family(keys) -> str:
    """Family of a single-file (LDM/SGM layout) checkpoint from its tensor names."""
    keys = set(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd15"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        if any(k.startswith("model.diffusion_model.label_emb.") for k in keys):
            raise TrainerError(
                "This checkpoint holds an SDXL-type UNet without SDXL's text encoders (a Kolors "
                "UNet file?). Load Kolors from its diffusers folder instead.")
        return "sd15"
    raise TrainerError(
        "Not a Stable Diffusion checkpoint: no model.diffusion_model.* tensors. "
        "Pick an SD1.5 or SDXL .safetensors checkpoint, or a diffusers folder.")
