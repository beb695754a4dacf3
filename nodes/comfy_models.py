"""ComfyUI's MODEL / CLIP / VAE as the trainer's model, sharing their weights (trainer/models/host_weights.py).

What is read is what ComfyUI a125cd84 hands a node from CheckpointLoaderSimple: a ModelPatcher whose
``model.state_dict()`` has LDM names under ``diffusion_model.``, with ``model_config.unet_config``
describing the UNet; a CLIP whose ``cond_stage_model`` holds ``clip_l.transformer.…`` (and
``clip_g.…`` on SDXL) in transformers' names; a VAE whose ``first_stage_model`` has LDM names.
"""

from __future__ import annotations

import torch

from ..trainer.errors import TrainerError
from . import comfy_env

FAMILIES = {"SD15": "sd15", "SDXL": "sdxl"}  # ComfyUI's supported_models class -> our family
CLIPS = ("clip_l", "clip_g")


def family_of(model) -> str:
    kind = type(model.model.model_config).__name__
    if kind not in FAMILIES:
        raise TrainerError(f"LoRA Train trains SD1.5 and SDXL MODELs; this one is ComfyUI's '{kind}'. For Kolors "
                           "connect Kolors/SDXL Loader's pipeline instead.")
    return FAMILIES[kind]


def prediction_of(model) -> str:
    """ComfyUI's model_type name: EPS, V_PREDICTION, ..."""
    return getattr(getattr(model.model, "model_type", None), "name", "EPS")


def _patched(patcher) -> int:
    return sum(len(v) for v in getattr(patcher, "patches", {}).values())


def check_unpatched(model, clip) -> None:
    """Training starts from the checkpoint's own weights: a MODEL/CLIP that already carries a LoRA
    (LoraLoader before LoRA Train) would silently train something else."""
    for what, patcher in (("MODEL", model), ("CLIP", clip.patcher)):
        count = _patched(patcher)
        if count:
            raise TrainerError(f"The {what} reaching LoRA Train has {count} patched weights (a LoRA loader before "
                               f"it?). Connect the {what} output of CheckpointLoaderSimple directly.")


def _groups(module, default: int = 32) -> int:
    return next((m.num_groups for m in module.modules() if isinstance(m, torch.nn.GroupNorm)), default)


def _heads(module) -> int:
    heads = next((m.heads for m in module.modules() if isinstance(getattr(m, "heads", None), int)), None)
    if heads is None:
        raise TrainerError("The CLIP's attention layers do not say their head count: this CLIP type is not "
                           "supported; connect CheckpointLoaderSimple's CLIP.")
    return heads


def _tokenizer_dir(clip) -> str | None:
    """The folder ComfyUI read its CLIP tokenizer from (comfy/sd1_tokenizer for SD1.5 and SDXL)."""
    tokenizer = getattr(getattr(clip.tokenizer, "clip_l", None), "tokenizer", None)
    folder = getattr(tokenizer, "name_or_path", None)
    if folder:
        return str(folder)
    from .model import comfy_tokenizer_dir

    return comfy_tokenizer_dir()


def read_host(model, clip, vae, source: str):
    """The HostModel view of ComfyUI's objects: the same tensors, nothing copied."""
    from ..trainer.models.host_weights import HostModel

    family = family_of(model)
    unet = {k[len("diffusion_model."):]: v for k, v in model.model.state_dict().items()
            if k.startswith("diffusion_model.")}
    clips = clip.cond_stage_model.state_dict()
    text, heads = {}, {}
    for name in CLIPS:
        prefix = f"{name}.transformer."
        part = {k[len(prefix):]: v for k, v in clips.items() if k.startswith(prefix)}
        if part:
            text[name], heads[name] = part, _heads(getattr(clip.cond_stage_model, name))
    return HostModel(family=family, unet_config=dict(model.model.model_config.unet_config), unet=unet, text=text,
                     vae=vae.first_stage_model.state_dict(), heads=heads,
                     unet_groups=_groups(model.model.diffusion_model), vae_groups=_groups(vae.first_stage_model),
                     latent_scale=float(model.model.latent_format.scale_factor), tokenizer_dir=_tokenizer_dir(clip),
                     source=source)


def hosted_pipeline(model, clip, vae, source: str = "ComfyUI MODEL"):
    """An LT_PIPELINE over ComfyUI's loaded weights. ComfyUI's model management first restores every
    model it patched and loads these three on the compute device, unpatched; nothing of ComfyUI
    runs during training, so nothing moves or patches them under the trainer."""
    from ..trainer.models.host_weights import build_from_host

    if clip is None or vae is None:
        raise TrainerError("LoRA Train with a MODEL also needs the CLIP and VAE of the same checkpoint: connect all "
                           "three outputs of CheckpointLoaderSimple.")
    check_unpatched(model, clip)

    def read():
        comfy_env.load_for_training([model, clip.patcher, vae.patcher])
        return read_host(model, clip, vae, source)

    with torch.inference_mode(False):
        return build_from_host(read(), read)
