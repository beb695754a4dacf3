"""Which modules get a LoRA, at which rank and alpha: kohya's ``networks.lora`` choice.

kohya's LoRANetwork puts a LoRA on every Linear and Conv2d inside the UNet's
``Transformer2DModel`` blocks (1x1 convs and linears at ``network_dim``), and with ``conv_dim``
also inside ``ResnetBlock2D`` / ``Downsample2D`` / ``Upsample2D`` (3x3 convs at ``conv_dim``, their
linears and 1x1 convs at ``network_dim``). diffusers' UNet uses the same class names, so the
same walk over its modules finds the same 192 (SD1.5) / 722 (SDXL) modules.

``target=attention`` keeps DiffSynth-Studio's set (to_q/to_k/to_v/to_out.0 of every attention),
the Kolors default (seed 001).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import TrainerError

TRANSFORMER_BLOCKS = ("Transformer2DModel",)
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
ATTENTION_ENDINGS = (".to_q", ".to_k", ".to_v", ".to_out.0")
TARGETS = ("kohya", "attention")
# network_args networks.lora reads (kohya's create_network kwargs, plus our target); its neuron
# dropout is network_dropout, not an arg. Per-block ranks change the LoRA and are refused.
NETWORK_ARGS = ("conv_dim", "conv_alpha", "target", "rank_dropout", "module_dropout",
                "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
PER_BLOCK_ARGS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
                  "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")


@dataclass
class NetworkSpec:
    """What ``networks.lora`` builds: TrainConfig's values with ``network_args`` applied."""

    target: str  # kohya | attention
    dim: int
    alpha: float
    conv_dim: int  # 0: no LoRA on the 3x3 convs (and no ResNet/sampler blocks at all)
    conv_alpha: float
    dropout: float  # kohya's neuron dropout on the LoRA's hidden activations
    rank_dropout: float
    module_dropout: float
    loraplus_unet: float | None  # lr multiplier of the up weights (LoRA+)
    loraplus_text_encoder: float | None


def parse_network_args(items) -> dict[str, str]:
    """kohya's ``network_args`` list (``["conv_dim=4", "conv_alpha=2"]``) -> {key: value}."""
    if isinstance(items, str):
        items = items.split()
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise TrainerError(f'network_args: "{item}" is not key=value (e.g. "conv_dim=4").')
        out[key.strip()] = value.strip()
    return out


def network_spec(config, family_name: str) -> NetworkSpec:
    """The network ``config`` asks for on a ``family_name`` model; conv_dim/conv_alpha may come from
    the top level or from network_args (kohya's place; it wins when both are given)."""
    args = parse_network_args(config.network_args)
    per_block = [k for k in args if k in PER_BLOCK_ARGS]
    if per_block:
        raise TrainerError(f"network_args {', '.join(per_block)}: per-block ranks and learning rates are not "
                           "available here; remove them to train every block at network_dim / conv_dim.")
    unknown = [k for k in args if k not in NETWORK_ARGS]
    if unknown:  # kohya's networks.lora ignores what it does not read (LyCORIS args in a LoRA config)
        warnings.warn(f"note: network_args {', '.join(unknown)} are not read by networks.lora (kohya ignores "
                      f"them too); it reads {', '.join(NETWORK_ARGS)}", stacklevel=2)
    target = args.get("target") or ("attention" if family_name == "kolors" else "kohya")
    if target not in TARGETS:
        raise TrainerError(f'network_args target="{target}": use "kohya" (every linear of the transformer '
                           'blocks, kohya\'s LoRA) or "attention" (to_q/to_k/to_v/to_out.0, DiffSynth\'s).')
    conv_dim = _number(args, "conv_dim", int, config.conv_dim)
    conv_alpha = _number(args, "conv_alpha", float, config.conv_alpha if "conv_dim" not in args else 1.0)

    def ratio(key):
        value = args.get(key, args.get("loraplus_lr_ratio"))
        return None if value is None else float(value)

    return NetworkSpec(target, int(config.network_dim), float(config.network_alpha), conv_dim, conv_alpha,
                       float(config.network_dropout or 0.0),
                       _number(args, "rank_dropout", float, 0.0), _number(args, "module_dropout", float, 0.0),
                       ratio("loraplus_unet_lr_ratio"), ratio("loraplus_text_encoder_lr_ratio"))


def _number(args: dict, key: str, kind, default):
    if key not in args:
        return default
    try:
        return kind(float(args[key])) if kind is int else kind(args[key])
    except ValueError:
        raise TrainerError(f'network_args {key}="{args[key]}" is not a number.') from None


def _lora_able(module) -> bool:
    """A plain Linear or Conv2d (not one of peft's own LoRA sub-layers)."""
    return type(module) in (torch.nn.Linear, torch.nn.Conv2d)


def unet_targets(unet, spec: NetworkSpec) -> dict[str, tuple[int, float]]:
    """{diffusers module path: (rank, alpha)} of the UNet modules ``spec`` puts a LoRA on, in
    the UNet's module order. Works on a UNet peft already wrapped (``.base_layer`` paths)."""
    out: dict[str, tuple[int, float]] = {}
    blocks = TRANSFORMER_BLOCKS + (CONV_BLOCKS if spec.conv_dim else ())
    for name, module in unet.named_modules():
        kind = type(module).__name__
        if kind not in blocks:
            continue
        for child_name, child in module.named_modules():
            if not _lora_able(child) or ".lora_" in f".{child_name}":
                continue
            path = f"{name}.{child_name}".removesuffix(".base_layer")
            if kind in TRANSFORMER_BLOCKS and spec.target == "attention" and not path.endswith(ATTENTION_ENDINGS):
                continue
            if isinstance(child, torch.nn.Conv2d) and child.kernel_size != (1, 1):
                out[path] = (spec.conv_dim, spec.conv_alpha)  # only inside conv blocks (conv_dim > 0)
            else:
                out[path] = (spec.dim, spec.alpha)
    return out


def text_encoder_targets(encoder, rank: int, alpha: float) -> dict[str, tuple[int, float]]:
    """{path: (rank, alpha)} of every Linear inside a CLIP text encoder's attention and MLP blocks
    (kohya's TEXT_ENCODER_TARGET_REPLACE_MODULE): q/k/v/out_proj and fc1/fc2 of each layer."""
    out = {}
    for name, module in encoder.named_modules():
        if type(module).__name__ in TEXT_ENCODER_BLOCKS:
            for child_name, child in module.named_modules():
                if _lora_able(child) and ".lora_" not in f".{child_name}":
                    out[f"{name}.{child_name}".removesuffix(".base_layer")] = (int(rank), float(alpha))
    return out
