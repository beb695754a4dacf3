"""DiffSynth-Studio's SDXL/Kolors UNet names (``blocks.N...``) -> diffusers UNet paths.

DiffSynth (diffsynth/models/sdxl_unet.py, SDXLUNet + SDXLUNetStateDictConverter, e.g. commit a30ed909)
flattens the UNet into one ``blocks`` list in forward order: down blocks (ResnetBlock, AttentionBlock
when the block has cross-attention, PushBlock per layer; DownSampler + PushBlock between blocks),
the mid block (Resnet, Attention, Resnet), then up blocks (PopBlock, ResnetBlock, AttentionBlock per
layer; UpSampler between blocks). Push/Pop blocks hold no weights but take an index. Its converter
renames ``to_out.0`` -> ``to_out``, ``ff.net.0`` -> ``act_fn``, ``ff.net.2`` -> ``ff``.

The table is derived from the UNet config, so the real SDXL/Kolors UNet (blocks.7 =
down_blocks.1.attentions.0, as in DiffSynth's own table) and a tiny test UNet both map.
"""

from __future__ import annotations

TOP_LEVEL = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "conv_norm_out",
             "time_embedding.0": "time_embedding.linear_1", "time_embedding.2": "time_embedding.linear_2",
             "add_time_embedding.0": "add_embedding.linear_1", "add_time_embedding.2": "add_embedding.linear_2",
             "text_intermediate_proj": "encoder_hid_proj"}
INNER = {"to_out": "to_out.0", "act_fn": "ff.net.0", "ff": "ff.net.2"}


def block_table(config) -> dict[int, str]:
    """{DiffSynth block index: diffusers module prefix} for a UNet2DConditionModel config."""
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("DiffSynth's block layout needs one layers_per_block for every block.")
    sequence: list[str | None] = []  # None = a Push/Pop block (no weights, still counted)
    downs = config["down_block_types"]
    for b, kind in enumerate(downs):
        for layer in range(lpb):
            sequence.append(f"down_blocks.{b}.resnets.{layer}")
            if "CrossAttn" in kind:
                sequence.append(f"down_blocks.{b}.attentions.{layer}")
            sequence.append(None)
        if b < len(downs) - 1:
            sequence += [f"down_blocks.{b}.downsamplers.0", None]
    sequence += ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    ups = config["up_block_types"]
    for b, kind in enumerate(ups):
        for layer in range(lpb + 1):
            sequence += [None, f"up_blocks.{b}.resnets.{layer}"]
            if "CrossAttn" in kind:
                sequence.append(f"up_blocks.{b}.attentions.{layer}")
        if b < len(ups) - 1:
            sequence.append(f"up_blocks.{b}.upsamplers.0")
    return {i: prefix for i, prefix in enumerate(sequence) if prefix is not None}


def to_diffusers_path(path: str, table: dict[int, str]) -> str | None:
    """``blocks.7.transformer_blocks.0.attn1.to_out`` -> ``down_blocks.1.attentions.0.transformer_blocks.0
    .attn1.to_out.0``; None when ``path`` is not a DiffSynth UNet module path."""
    for old, new in TOP_LEVEL.items():
        if path == old:
            return new
    parts = path.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit() or int(parts[1]) not in table:
        return None
    rest = parts[2:]
    rest = [INNER[p] if p in ("to_out", "act_fn") or (p == "ff" and i == len(rest) - 1) else p
            for i, p in enumerate(rest)]
    return ".".join([table[int(parts[1])]] + rest)
