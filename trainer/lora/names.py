"""Module names of a LoRA in our kohya layout, and the lookups that turn other namings into them.

Our layout (what ComfyUI's LoraLoader, A1111 and kohya tools read):
  UNet          ``lora_unet_`` + diffusers module path with ``.`` -> ``_``
                (``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q``)
  text encoder  ``lora_te_`` (SD1.5) / ``lora_te1_`` + ``lora_te2_`` (SDXL) + the HF CLIP path with the
                ``text_model.`` level (``lora_te1_text_model_encoder_layers_0_self_attn_q_proj``)

LDM names (``input_blocks_4_1_...``, what kohya writes for SDXL and what ComfyUI's own trainer uses
with dots) come from ``trainer.models.ldm_write.unet_to_ldm``, the mapping our single-file writer uses.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

TE_PREFIXES = {"sd15": {"text_encoder": "lora_te"},
               "sdxl": {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
               "kolors": {}}  # ChatGLM: no kohya text-encoder naming exists
# kohya's text-encoder LoRA targets (CLIPAttention + CLIPMLP), as ComfyUI's LORA_CLIP_MAP names them
CLIP_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
_TE_NAME = re.compile(r"^text_model_encoder_layers_(\d+)_(self_attn_[qkv]_proj|self_attn_out_proj|mlp_fc[12])$")


def kohya_name(component: str, path: str, family: str) -> str:
    """Our kohya module name for ``path`` inside ``component`` (unet, text_encoder, text_encoder_2)."""
    if component == "unet":
        return "lora_unet_" + path.replace(".", "_")
    prefix = TE_PREFIXES.get(family, {}).get(component)
    if prefix is None:
        raise ValueError(f"no kohya name for a {family} {component} LoRA")
    if not path.startswith("text_model."):  # transformers >= 5.6 drops the text_model level
        path = "text_model." + path
    return f"{prefix}_{path.replace('.', '_')}"


def module_path(root, path: str) -> str:
    """``path`` as ``root`` names it: transformers >= 5.6 CLIP models lack the ``text_model.`` level."""
    if path.startswith("text_model.") and not hasattr(root, "text_model"):
        return path[len("text_model."):]
    return path


def te_path(name_without_prefix: str) -> str | None:
    """``text_model_encoder_layers_3_self_attn_q_proj`` -> ``text_model.encoder.layers.3.self_attn.q_proj``."""
    match = _TE_NAME.match(name_without_prefix)
    if not match:
        return None
    layer, module = match.groups()
    module = module.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
    return f"text_model.encoder.layers.{layer}.{module}"


def te_component(prefix: str, family: str) -> str | None:
    """``lora_te1`` -> ``text_encoder`` for SDXL (``lora_te`` and ``lora_te1`` both mean the first one)."""
    table = TE_PREFIXES.get(family, {})
    for component, known in table.items():
        if prefix == known:
            return component
    if prefix in ("lora_te", "lora_te1") and "text_encoder" in table:
        return "text_encoder"
    return None


def _config_key(config) -> str:
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


@lru_cache(maxsize=8)
def _unet_modules(config_json: str) -> dict[str, tuple[int, ...]]:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # names and shapes only: no weights are allocated
        unet = UNet2DConditionModel.from_config(json.loads(config_json))
    return {name: tuple(module.weight.shape) for name, module in unet.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}


def unet_modules(config) -> dict[str, tuple[int, ...]]:
    """{diffusers path: weight shape} of every Linear/Conv2d of a UNet with ``config`` (meta device)."""
    return _unet_modules(_config_key(config))


@lru_cache(maxsize=8)
def _ldm_map(config_json: str) -> dict[str, str]:
    from ..models.ldm_write import unet_to_ldm

    config, out = json.loads(config_json), {}
    for path in _unet_modules(config_json):
        try:
            (ldm,) = unet_to_ldm({path + ".weight": None}, config)
        except ValueError:  # e.g. Kolors' encoder_hid_proj: no LDM name, never a LoRA target
            continue
        out[ldm.removesuffix(".weight")] = path
    return out


def ldm_to_diffusers(config) -> dict[str, str]:
    """LDM module path (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``) -> diffusers path."""
    return _ldm_map(_config_key(config))


@lru_cache(maxsize=8)
def _diffusers_to_ldm(config_json: str) -> dict[str, str]:
    return {path: ldm for ldm, path in _ldm_map(config_json).items()}


def unet_file_name(path: str, family: str, config) -> str:
    """The kohya module name a UNet LoRA file uses for diffusers ``path``: SGM (LDM) naming for SDXL,
    as kohya's sdxl_train_network writes (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``);
    diffusers naming for SD1.5 (kohya's SD1.5 UNet has diffusers' names) and Kolors (as before)."""
    if family == "sdxl":
        ldm = _diffusers_to_ldm(_config_key(config)).get(path)
        if ldm:
            return "lora_unet_" + ldm.replace(".", "_")
    return "lora_unet_" + path.replace(".", "_")


def unet_lookup(config) -> dict[str, str]:
    """Every underscore name a kohya UNet LoRA may use (diffusers or LDM naming) -> diffusers path."""
    table = {path.replace(".", "_"): path for path in unet_modules(config)}
    table.update({ldm.replace(".", "_"): path for ldm, path in ldm_to_diffusers(config).items()})
    return table
