"""Write diffusers components as one single-file checkpoint in the original LDM/SGM key layout.

The exact inverse of diffusers' single-file converters (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``
in diffusers/loaders/single_file_utils.py), so ``from_single_file`` reads the file back exactly:

  UNet          -> model.diffusion_model.{time_embed, label_emb, input_blocks, middle_block, output_blocks, out}
  VAE           -> first_stage_model.{encoder.down.N.block.M, mid.attn_1.q/k/v/proj_out, decoder.up (reversed)}
  CLIP-L        -> cond_stage_model.transformer.text_model.* (SD1.5), conditioner.embedders.0.transformer.* (SDXL)
  OpenCLIP-G    -> conditioner.embedders.1.model.{token_embedding, positional_embedding, transformer.resblocks.i, ...}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import save_safetensors

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_PREFIXES = {
    "sd15": {"text_encoder": "cond_stage_model.transformer."},
    "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.",
             "text_encoder_2": "conditioner.embedders.1.model."},
}
# diffusers ResnetBlock2D name -> LDM ResBlock name (UNet)
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# diffusers Attention name -> LDM AttnBlock name (VAE mid-block)
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(state: dict, pairs: list[tuple[str, str, dict | None]], what: str) -> dict:
    """Swap the longest matching diffusers prefix for its LDM prefix (+ rename the first sub-name)."""
    pairs = sorted(pairs, key=lambda p: -len(p[0]))
    out = {}
    for key, value in state.items():
        for old, new, subnames in pairs:
            if key.startswith(old):
                rest = key[len(old):]
                for a, b in (subnames or {}).items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
                out[new + rest] = value
                break
        else:
            raise ValueError(f"{what}: no LDM name for diffusers tensor '{key}'")
    return out


def unet_to_ldm(state: dict, config) -> dict:
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("Per-block layers_per_block lists have no LDM single-file layout.")
    pairs = [("time_embedding.linear_1.", "time_embed.0.", None), ("time_embedding.linear_2.", "time_embed.2.", None),
             ("add_embedding.linear_1.", "label_emb.0.0.", None), ("add_embedding.linear_2.", "label_emb.0.2.", None),
             ("conv_in.", "input_blocks.0.0.", None), ("conv_norm_out.", "out.0.", None), ("conv_out.", "out.2.", None),
             ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET),
             ("mid_block.attentions.0.", "middle_block.1.", None),
             ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET)]
    for b in range(len(config["down_block_types"])):
        first = 1 + b * (lpb + 1)  # input_blocks index of this block's first layer
        for layer in range(lpb):
            pairs += [(f"down_blocks.{b}.resnets.{layer}.", f"input_blocks.{first + layer}.0.", UNET_RESNET),
                      (f"down_blocks.{b}.attentions.{layer}.", f"input_blocks.{first + layer}.1.", None)]
        pairs.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{first + lpb}.0.op.", None))
    for b, block_type in enumerate(config["up_block_types"]):
        first = b * (lpb + 1)  # up blocks hold layers_per_block + 1 layers
        for layer in range(lpb + 1):
            pairs += [(f"up_blocks.{b}.resnets.{layer}.", f"output_blocks.{first + layer}.0.", UNET_RESNET),
                      (f"up_blocks.{b}.attentions.{layer}.", f"output_blocks.{first + layer}.1.", None)]
        slot = 2 if "Attn" in block_type else 1  # the upsampler follows the attention when there is one
        pairs.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{first + lpb}.{slot}.conv.", None))
    return _rename(state, pairs, "UNet")


def vae_to_ldm(state: dict, config) -> dict:
    n = len(config["down_block_types"])
    pairs = [(p, p, None) for p in ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.",
                                    "quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTN)]
        pairs += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.", None) for i in range(2)]
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", None),
                  (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", None),
                  (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.", None),
                  (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.", None)]
    out = {}
    for key, value in _rename(state, pairs, "VAE").items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # LDM keeps the attention projections as 1x1 convs
        out[key] = value
    return out


def _text_model_keys(state: dict) -> dict:
    """HF CLIP names with the ``text_model.`` level real checkpoints have (transformers >= 5.6 drops it)."""
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def open_clip_to_ldm(state: dict) -> dict:
    state = _text_model_keys(state)
    out = {"token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
           "text_projection": state.pop("text_projection.weight").T.contiguous()}
    layers = "text_model.encoder.layers."
    qkv: dict[str, dict] = {}
    for key, value in state.items():
        if key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
            continue
        if not key.startswith(layers):
            raise ValueError(f"OpenCLIP: no LDM name for '{key}'")
        index, rest = key[len(layers):].split(".", 1)
        block = f"transformer.resblocks.{index}."
        if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            proj, kind = rest.split(".")[1:3]  # e.g. q_proj, weight
            qkv.setdefault(f"{block}attn.in_proj_{kind}", {})[proj] = value
            continue
        rest = (rest.replace("layer_norm1.", "ln_1.").replace("layer_norm2.", "ln_2.").replace("self_attn.", "attn.")
                .replace("mlp.fc1.", "mlp.c_fc.").replace("mlp.fc2.", "mlp.c_proj."))
        out[block + rest] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


def checkpoint_tensors(family_name: str, parts: dict, dtype: torch.dtype | None = None) -> dict:
    """All tensors of a single-file checkpoint for ``parts`` (unet, vae, text_encoder[, text_encoder_2])."""
    if family_name not in CLIP_PREFIXES:
        raise ValueError(f"No single-file layout for family '{family_name}' (only sd15 and sdxl).")
    unet, vae = parts["unet"], parts["vae"]
    tensors = {UNET + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}
    tensors.update({VAE + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()})
    for name, prefix in CLIP_PREFIXES[family_name].items():
        state = parts[name].state_dict()
        text = open_clip_to_ldm(state) if name == "text_encoder_2" else _text_model_keys(state)
        tensors.update({prefix + k: v for k, v in text.items()})
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors


# Header entry holding the components' diffusers configs, for architectures no bundled config
# describes (the tiny test models); real checkpoints load with the bundled SD1.5 / SDXL configs.
EMBEDDED_CONFIGS = "lora_trainer.diffusers_configs"


def component_configs(parts: dict) -> dict[str, dict]:
    """{component: its config.json content} for the UNet, VAE and text encoders."""
    out = {}
    for name, module in parts.items():
        config = getattr(module, "config", None)
        if config is None or name not in ("unet", "vae", "text_encoder", "text_encoder_2"):
            continue
        out[name] = config.to_dict() if hasattr(config, "to_dict") else {
            "_class_name": type(module).__name__, **dict(config)}
    return out


def write_single_file(family_name: str, parts: dict, file, dtype: torch.dtype | None = None,
                      embed_configs: bool = False) -> Path:
    """Convert diffusers components to the single-file layout and write them atomically.

    ``embed_configs`` stores the components' configs in the header, so a model of a non-standard
    size loads from the file alone (the loader reads them instead of the bundled configs)."""
    tensors = checkpoint_tensors(family_name, parts, dtype)
    metadata = {"format": "pt"}
    if embed_configs:
        metadata[EMBEDDED_CONFIGS] = json.dumps(component_configs(parts), default=list)
    return save_safetensors(file, tensors, metadata=metadata)
