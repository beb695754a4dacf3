"""Diffusers configs for a model another program has loaded, from what it tells about it.

A host such as ComfyUI describes its UNet in LDM terms (``unet_config``: model_channels,
channel_mult, num_res_blocks, transformer_depth, heads ...) and holds its CLIP and VAE weights
at the architecture's real shapes. The bundled SD1.5 / SDXL configs give everything else
(activations, eps, schedulers); what the host's weights say wins, so checkpoints of other sizes
(distilled SDXL, the tests' tiny models) build too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import TrainerError

CONFIGS = Path(__file__).parent / "configs"


def bundled(family: str, part: str) -> dict:
    return json.loads((CONFIGS / family / part / "config.json").read_text(encoding="utf-8"))


def unet_config(family: str, ldm: dict, norm_groups: int, pooled_dim: int | None = None) -> dict:
    """The diffusers UNet2DConditionModel config of an LDM UNet described by ``ldm`` (the keys
    ComfyUI's model detection writes). ``pooled_dim``: SDXL's pooled text width, which together
    with adm_in_channels gives the size-embedding width."""
    config = bundled(family, "unet")
    mult, channels = list(ldm["channel_mult"]), int(ldm["model_channels"])
    res_blocks = ldm["num_res_blocks"]
    res_blocks = list(res_blocks) if isinstance(res_blocks, (list, tuple)) else [int(res_blocks)] * len(mult)
    depth = list(ldm["transformer_depth"])
    widths = [channels * m for m in mult]
    # transformer_depth lists each input res block; a level has attention when its first one has
    level_depth = [int(depth[sum(res_blocks[:i])]) if sum(res_blocks[:i]) < len(depth) else 0
                   for i in range(len(mult))]
    middle = ldm.get("transformer_depth_middle")
    if middle is None or middle < 0:
        raise TrainerError("This MODEL's UNet has no attention in its middle block, which SD1.5/SDXL UNets always "
                           "have: load it with Kolors/SDXL Loader instead.")
    layers = [max(d, 1) for d in level_depth]
    attn_levels = [i for i, d in enumerate(level_depth) if d]
    if attn_levels and middle != layers[attn_levels[-1]]:
        raise TrainerError(f"This MODEL's UNet has {middle} transformer layers in its middle block and "
                           f"{layers[attn_levels[-1]]} in its last attention level; diffusers cannot describe that. "
                           "Load it with Kolors/SDXL Loader instead.")
    if ldm.get("num_head_channels", -1) not in (-1, None):
        heads = [w // int(ldm["num_head_channels"]) for w in widths]
    else:
        heads = int(ldm["num_heads"])
    config.update(
        in_channels=int(ldm.get("in_channels", 4)), out_channels=int(ldm.get("out_channels", 4)),
        block_out_channels=widths, layers_per_block=res_blocks[0] if len(set(res_blocks)) == 1 else res_blocks,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in level_depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(level_depth)],
        transformer_layers_per_block=layers if family == "sdxl" else (layers if len(set(layers)) > 1 else layers[0]),
        attention_head_dim=heads, cross_attention_dim=int(ldm["context_dim"]),
        use_linear_projection=bool(ldm.get("use_linear_in_transformer", False)), norm_num_groups=int(norm_groups))
    adm = ldm.get("adm_in_channels")
    if family == "sdxl":
        if not adm or not pooled_dim or (int(adm) - pooled_dim) % 6:
            raise TrainerError(f"This MODEL is not an SDXL base UNet (adm_in_channels {adm}); an SDXL refiner or "
                               "another variant cannot be trained here.")
        config.update(projection_class_embeddings_input_dim=int(adm), addition_time_embed_dim=(int(adm) - pooled_dim) // 6)
    elif adm:
        raise TrainerError(f"This MODEL's UNet takes a class embedding (adm_in_channels {adm}), which SD1.5 does "
                           "not: it is another model type. Load it with Kolors/SDXL Loader instead.")
    return config


def clip_config(family: str, part: str, state: dict, heads: int, tokenizer) -> dict:
    """A transformers CLIP text config for the HF-named ``state`` (``text_model.…``)."""
    config = bundled(family, part)
    layers = {int(m.group(1)) for k in state for m in [re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)] if m}
    token = state["text_model.embeddings.token_embedding.weight"]
    config.update(vocab_size=int(token.shape[0]), hidden_size=int(token.shape[1]), num_hidden_layers=len(layers),
                  max_position_embeddings=int(state["text_model.embeddings.position_embedding.weight"].shape[0]),
                  intermediate_size=int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                  num_attention_heads=int(heads))
    if "text_projection.weight" in state:
        config["projection_dim"] = int(state["text_projection.weight"].shape[0])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the pooled output looks for the eos id
        value = getattr(tokenizer, name, None)
        if value is not None:
            config[name] = int(value)
    return config


def vae_config(family: str, state: dict, norm_groups: int, scaling_factor: float) -> dict:
    """A diffusers AutoencoderKL config for the LDM-named VAE ``state``."""
    config = bundled(family, "vae")
    levels = sorted({int(m.group(1)) for k in state for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    widths = [int(state[f"encoder.down.{i}.block.{_last_block(state, i)}.conv2.weight"].shape[0]) for i in levels]
    config.update(block_out_channels=widths, layers_per_block=_last_block(state, 0) + 1,
                  latent_channels=int(state["decoder.conv_in.weight"].shape[1]),
                  down_block_types=["DownEncoderBlock2D"] * len(widths), up_block_types=["UpDecoderBlock2D"] * len(widths),
                  norm_num_groups=int(norm_groups), scaling_factor=float(scaling_factor))
    return config


def _last_block(state: dict, level: int) -> int:
    return max(int(m.group(1)) for k in state for m in [re.match(rf"encoder\.down\.{level}\.block\.(\d+)\.", k)] if m)
