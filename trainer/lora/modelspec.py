"""The ``modelspec.*`` keys of a LoRA file (Stability AI's ModelSpec 1.0.1), written as kohya's
sd-scripts writes them: title (metadata_title, else output_name), author, description, license,
tags, trigger phrase, usage hint and a thumbnail as a data URL, besides what the run itself says
(architecture, resolution, prediction type, timestep range, encoder layer)."""

from __future__ import annotations

import base64
import datetime
import io
import mimetypes
import os
import time
from pathlib import Path

SPEC_VERSION = "1.0.1"
# kohya's implementation for LoRAs with SGM (ldm) key names, i.e. its SDXL ones; others are diffusers'
SGM = "https://github.com/Stability-AI/generative-models"
SGM_PREFIXES = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
THUMBNAIL_SIDE = 256  # a sample image becomes a JPEG of at most this side: a few tens of kB in the header
THUMBNAIL_QUALITY = 90


def modelspec_metadata(config, family, tensor_names=(), thumbnail: str | os.PathLike | None = None) -> dict[str, str]:
    """kohya's modelspec keys for this run; ``thumbnail`` is the image used when the config names
    none (the run's last sample). Empty options are left out, as kohya leaves out None ones."""
    width, height = config.size()
    sgm = any(name.startswith(SGM_PREFIXES) for name in tensor_names)
    meta = {
        "modelspec.sai_model_spec": SPEC_VERSION,
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.implementation": SGM if sgm else "diffusers",
        "modelspec.title": config.metadata_title or config.output_name,
        "modelspec.resolution": f"{width}x{height}",
        # kohya dates the file when it is saved, to the second
        "modelspec.date": datetime.datetime.fromtimestamp(int(time.time())).isoformat(),
        "modelspec.prediction_type": "v" if config.v_parameterization else "epsilon",
    }
    optional = {"author": config.metadata_author, "description": config.metadata_description,
                "license": config.metadata_license, "tags": config.metadata_tags,
                "usage_hint": config.metadata_usage_hint,
                "trigger_phrase": config.metadata_trigger_phrase or config.class_tokens}
    if config.min_timestep is not None or config.max_timestep is not None:
        start = config.min_timestep if config.min_timestep is not None else 0
        end = config.max_timestep if config.max_timestep is not None else 1000
        optional["timestep_range"] = f"{start},{end}"
    if config.clip_skip:  # 0 is "the family's default", kohya's None
        optional["encoder_layer"] = str(config.clip_skip)
    optional["thumbnail"] = thumbnail_data_url(config.metadata_thumbnail) if config.metadata_thumbnail \
        else sample_data_url(thumbnail)
    meta.update({f"modelspec.{key}": str(value) for key, value in optional.items() if value})
    return meta


def thumbnail_data_url(value: str) -> str | None:
    """metadata_thumbnail as kohya takes it: a data URL as it is, a file as a data URL of its bytes
    (type from the extension); None when the file is not there (kohya warns and saves without)."""
    if value.startswith("data:"):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        return None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def sample_data_url(path: str | os.PathLike | None) -> str | None:
    """A sample image as a small JPEG data URL (at most THUMBNAIL_SIDE a side): a full-size PNG
    would add megabytes to the header of every save."""
    if not path or not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def missing_thumbnail(config) -> str | None:
    """A note when metadata_thumbnail names a file that is not there, for the start of the run."""
    value = config.metadata_thumbnail
    if value and not value.startswith("data:") and not Path(value).expanduser().is_file():
        return f"metadata_thumbnail file not found: {value}; the LoRA is saved without a thumbnail"
    return None


def thumbnail_allowance(config) -> int:
    """Header bytes the thumbnail may take (for the free-space check before the run)."""
    value = config.metadata_thumbnail
    if value:
        if value.startswith("data:"):
            return len(value)
        path = Path(value).expanduser()
        return (path.stat().st_size * 4 // 3 + 64) if path.is_file() else 0
    if not config.sample_prompts:
        return 0
    from ..sample_prompts import parse_prompt_line

    width, height = config.size()
    largest = 0
    for line in config.sample_prompts:
        prompt = parse_prompt_line(line)
        w, h = prompt.width or width, prompt.height or height
        scale = min(1.0, THUMBNAIL_SIDE / max(w, h))
        largest = max(largest, round(w * scale) * round(h * scale))
    # a JPEG at this quality stays below the raw pixel bytes; base64 adds 4/3
    return largest * 3 * 4 // 3 + 64
