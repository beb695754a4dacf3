"""What ComfyUI a125cd84's model detection reads from an SD1.5 / SDXL single file, rebuilt in our own
small code: the tensors and header, ``unet_config`` as comfy/model_detection.py derives it, the
family's model_config class (SD15 / SDXL), latent format and model type. ComfyUI itself recognises
only the full-size shapes (32 norm groups, 64-wide SDXL heads); for the tiny test checkpoints the
group counts and head widths come from the diffusers configs embedded in the file's header
(trainer.tiny.build.write_tiny_checkpoint). comfy_core_models.py builds the modules from them."""

from __future__ import annotations

import contextlib
import enum
import json

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
EMBEDDED_CONFIGS = "lora_trainer.diffusers_configs"  # trainer.models.ldm_write.EMBEDDED_CONFIGS
CPU = torch.device("cpu")


@contextlib.contextmanager
def single_thread():
    """Tiny models run on one thread: on a small CPU shared with other work, torch's thread hand-offs
    cost more than the arithmetic (measured here: 0.1 s against 0.7-7 s for a 3-step 64 px image)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_checkpoint(path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def embedded_configs(metadata: dict) -> dict:
    text = metadata.get(EMBEDDED_CONFIGS)
    return json.loads(text) if text else {}


# --- unet_config, derived from the tensors the way comfy/model_detection.detect_unet_config does ---

def _transformer_depth(sd, prefix):
    """(depth, context_dim, linear proj_in) of the SpatialTransformer at ``prefix``1, or None."""
    blocks = prefix + "1.transformer_blocks."
    depth = 0
    while any(k.startswith(f"{blocks}{depth}.") for k in sd):
        depth += 1
    if depth == 0:
        return None
    return depth, sd[f"{blocks}0.attn2.to_k.weight"].shape[1], sd[f"{prefix}1.proj_in.weight"].ndim == 2


def detect_unet_config(sd: dict, prefix: str) -> dict:
    if f"{prefix}input_blocks.0.0.weight" not in sd:
        raise ValueError("no UNet (input_blocks.0.0.weight) in the checkpoint")
    config = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False}
    if f"{prefix}label_emb.0.0.weight" in sd:
        config["num_classes"] = "sequential"
        config["adm_in_channels"] = sd[f"{prefix}label_emb.0.0.weight"].shape[1]
    else:
        config["adm_in_channels"] = None
    model_channels, in_channels = sd[f"{prefix}input_blocks.0.0.weight"].shape[:2]
    out_channels = sd[f"{prefix}out.2.weight"].shape[0] if f"{prefix}out.2.weight" in sd else 4
    count = 0
    while any(k.startswith(f"{prefix}input_blocks.{count}.") for k in sd):
        count += 1
    res_blocks, mult, depth_in, depth_out = [], [], [], []
    context_dim, linear = None, False
    level_blocks = level_mult = 0
    for i in range(count):
        here, mirror = f"{prefix}input_blocks.{i}.", f"{prefix}output_blocks.{count - i - 1}."
        if f"{here}0.op.weight" in sd:  # a downsampler closes the level
            res_blocks.append(level_blocks)
            mult.append(level_mult)
            level_blocks = level_mult = 0
            found = _transformer_depth(sd, mirror)
            depth_out.append(found[0] if found else 0)
            continue
        if f"{here}0.in_layers.0.weight" in sd:
            level_blocks += 1
            level_mult = sd[f"{here}0.out_layers.3.weight"].shape[0] // model_channels
            found = _transformer_depth(sd, here)
            depth_in.append(found[0] if found else 0)
            if found and context_dim is None:
                context_dim, linear = found[1], found[2]
        if f"{mirror}0.in_layers.0.weight" in sd:
            found = _transformer_depth(sd, mirror)
            depth_out.append(found[0] if found else 0)
    res_blocks.append(level_blocks)
    mult.append(level_mult)
    if f"{prefix}middle_block.1.proj_in.weight" in sd:
        middle = 0
        while any(k.startswith(f"{prefix}middle_block.1.transformer_blocks.{middle}") for k in sd):
            middle += 1
    else:
        middle = -1 if f"{prefix}middle_block.0.in_layers.0.weight" in sd else -2
    config.update(in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
                  num_res_blocks=res_blocks, transformer_depth=depth_in, transformer_depth_output=depth_out,
                  channel_mult=mult, transformer_depth_middle=middle, use_linear_in_transformer=linear,
                  context_dim=context_dim, use_temporal_resblock=False, use_temporal_attention=False)
    return config


class LatentFormat:
    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor


class SD15Latent(LatentFormat):
    def __init__(self, scale_factor=0.18215):
        self.scale_factor = scale_factor


class SDXLLatent(LatentFormat):
    scale_factor = 0.13025


SD15Latent.__name__ = SD15Latent.__qualname__ = "SD15"  # ComfyUI's latent_formats class names
SDXLLatent.__name__ = SDXLLatent.__qualname__ = "SDXL"


class ModelType(enum.Enum):
    EPS = 1
    V_PREDICTION = 2


class _FamilyConfig:
    """comfy.supported_models_base.BASE, for the fields a node reads."""
    unet_match: dict = {}
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}
    latent_format_class = LatentFormat
    memory_usage_factor = 2.0
    vae_key_prefix = ["first_stage_model."]
    text_encoder_key_prefix = ["cond_stage_model."]
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def __init__(self, unet_config):
        self.unet_config = dict(unet_config)
        self.unet_config.update(self.unet_extra_config)
        self.latent_format = self.latent_format_class()
        self.sampling_settings = {}
        self.manual_cast_dtype = None
        self.custom_operations = None
        self.scaled_fp8 = None
        self.optimizations = {"fp8": False}

    @classmethod
    def matches(cls, unet_config, state_dict=None):
        return all(k in unet_config and unet_config[k] == v for k, v in cls.unet_match.items())

    def inpaint_model(self):
        return self.unet_config["in_channels"] > 4

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype


class SD15(_FamilyConfig):
    unet_match = {"context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False,
                  "adm_in_channels": None, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": 8, "num_head_channels": -1}
    latent_format_class = SD15Latent
    memory_usage_factor = 1.0


class SDXL(_FamilyConfig):
    unet_match = {"model_channels": 320, "use_linear_in_transformer": True, "transformer_depth": [0, 0, 2, 2, 10, 10],
                  "context_dim": 2048, "adm_in_channels": 2816, "use_temporal_attention": False}
    latent_format_class = SDXLLatent
    memory_usage_factor = 0.8


def _head_geometry(family, diffusers_unet: dict) -> dict:
    """num_heads / num_head_channels describing the tiny UNet's attention the way the family's
    class does (SD1.5: a head count, SDXL: a head width), from its diffusers config."""
    blocks = diffusers_unet["down_block_types"]
    channels = diffusers_unet["block_out_channels"]
    heads = diffusers_unet.get("num_attention_heads") or diffusers_unet["attention_head_dim"]
    heads = heads if isinstance(heads, (list, tuple)) else [heads] * len(blocks)
    with_attention = [i for i, kind in enumerate(blocks) if "CrossAttn" in kind] or range(len(blocks))
    counts = {heads[i] for i in with_attention}
    widths = {channels[i] // heads[i] for i in with_attention}
    if family.unet_extra_config["num_head_channels"] == -1 and len(counts) == 1:
        return {"num_heads": counts.pop(), "num_head_channels": -1}
    if len(widths) == 1:
        return {"num_heads": -1, "num_head_channels": widths.pop()}
    raise ValueError(f"attention heads {heads} over channels {channels}: neither one head count nor one head width")


def family_config(unet_config: dict, diffusers_unet: dict | None) -> _FamilyConfig:
    for family in (SD15, SDXL):
        if family.matches(unet_config):
            return family(unet_config)
    if diffusers_unet is None:
        raise ValueError("the stand-in knows SD1.5 and SDXL checkpoints (or tiny ones with embedded configs); "
                         f"this UNet is neither: {unet_config}")
    family = SDXL if unet_config["adm_in_channels"] else SD15
    config = family(unet_config)
    config.unet_config.update(_head_geometry(family, diffusers_unet))
    return config
