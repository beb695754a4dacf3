"""Load a model (diffusers folder or single-file checkpoint) into a ready pipeline."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import TrainerError
from ..families import get_family
from .detect import detect_folder_family
from .loaded import DTYPES, LoadedModel, sampling_scheduler, to_dtype  # noqa: F401 (imported from here)
from .parts import load_diffusers_model


def load_model(path, family: str = "auto", dtype="fp32", vae_path=None, tokenizer_dir=None,
               config_dir=None, text_encoder_bits: int = 0) -> LoadedModel:
    """Load a diffusers folder or a single-file .safetensors checkpoint.

    ``vae_path`` swaps in a separate VAE (a diffusers VAE folder or a .safetensors file, e.g.
    sdxl-vae-fp16-fix); ``tokenizer_dir`` and ``config_dir`` supply what a single-file
    checkpoint does not carry. ``text_encoder_bits`` 8 or 4 loads Kolors' ChatGLM3 (12 GB in
    fp16) quantised by bitsandbytes, which needs a CUDA GPU.
    """
    if text_encoder_bits and not torch.cuda.is_available():
        raise TrainerError(f"{text_encoder_bits}-bit text encoder loading needs an NVIDIA GPU (bitsandbytes on "
                           "CUDA); on this machine choose full precision.")
    path = Path(path)
    dtype = to_dtype(dtype)
    if not path.exists():
        raise TrainerError(f"Model not found: {path}. Give a diffusers folder or a .safetensors checkpoint.")
    if path.is_file():
        from .single_file import load_single_file

        model = load_single_file(path, family, dtype, tokenizer_dir=tokenizer_dir, config_dir=config_dir)
    else:
        fam = get_family(detect_folder_family(path) if family == "auto" else family)
        if text_encoder_bits and fam.name != "kolors":
            raise TrainerError("8-/4-bit text encoders are offered for Kolors' ChatGLM3 only.")
        parts = fam.load_text_parts(path, dtype, tokenizer_dir, **({"bits": text_encoder_bits} if text_encoder_bits else {}))
        parts["unet"] = load_diffusers_model(path, "unet", "UNet2DConditionModel", dtype, "UNet")
        parts["vae"] = load_diffusers_model(path, "vae", "AutoencoderKL", torch.float32, "VAE")
        pipe = fam.build_pipeline(parts, sampling_scheduler(fam, path))
        model = LoadedModel(fam, pipe, str(path), dtype)
    if vae_path:
        model.pipe.vae = load_vae(vae_path, model.family.name)
    for module in [model.unet, model.vae, *model.text_encoders()]:
        module.requires_grad_(False)
        module.eval()
    return model


def load_vae(path, family: str | None = None):
    """A separate VAE: a diffusers VAE folder (with config.json) or a single .safetensors file."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainerError(f"VAE folder {path} has no config.json.")
        return AutoencoderKL.from_pretrained(str(path), torch_dtype=torch.float32, local_files_only=True)
    if path.suffix != ".safetensors":
        raise TrainerError(f"VAE {path}: give a diffusers VAE folder or a .safetensors file.")
    from .single_file import load_single_file_vae

    return load_single_file_vae(path, family=family)
