"""An adapter picked by name (TrainConfig ``network``, the LoRA Train ``network`` widget) written as
the kohya / LyCORIS settings that train it, so the saved TOML and the file's metadata read back
the same in kohya + LyCORIS.

  LoRA   networks.lora (conv_dim as set)          LoHa  lycoris.kohya algo=loha
  LoCon  networks.lora with conv_dim (= dim)       LoKr  lycoris.kohya algo=lokr
  DoRA   lycoris.kohya algo=lora dora_wd=True wd_on_output=False (the axis ComfyUI applies exactly)
  OFT    lycoris.kohya algo=diag-oft

LyCORIS algorithms take ``preset=attn-mlp`` (kohya's LoRA set + the time embedding) unless
network_args names a preset, or ``full`` when conv_dim is set."""

from __future__ import annotations

from ..errors import TrainerError
from .lycoris_spec import LYCORIS_MODULE
from .targets import parse_network_args

NETWORKS = ("LoRA", "LoCon", "LoHa", "LoKr", "DoRA", "OFT")
_LYCORIS = {"loha": ["algo=loha"], "lokr": ["algo=lokr"], "oft": ["algo=diag-oft"],
            "dora": ["algo=lora", "dora_wd=True", "wd_on_output=False"]}


def apply_network_choice(config) -> None:
    """Set ``config.network_module`` / ``network_args`` / ``conv_dim`` from ``config.network``."""
    choice = (config.network or "").strip().lower()
    if not choice:
        return
    names = {n.lower(): n for n in NETWORKS}
    if choice not in names:
        raise TrainerError(f'network "{config.network}" is not one this trainer trains: use one of '
                           f'{", ".join(NETWORKS)} (or network_module / network_args as kohya writes them).')
    config.network = names[choice]
    args = parse_network_args(config.network_args)
    if choice in ("lora", "locon"):
        if config.network_module != "networks.lora" or "algo" in args:
            raise TrainerError(f'network = "{config.network}" trains networks.lora; remove network_module = '
                               f'"{config.network_module}" / algo from network_args, or pick that network instead.')
        if choice == "locon" and not config.conv_dim and "conv_dim" not in args:
            config.conv_dim, config.conv_alpha = config.network_dim, config.network_alpha
        return
    wanted = dict(a.split("=", 1) for a in _LYCORIS[choice])
    clash = [k for k, v in wanted.items() if k in args and args[k].lower() != v.lower()]
    if clash or config.network_module not in ("networks.lora", LYCORIS_MODULE):
        raise TrainerError(f'network = "{config.network}" means network_module = "{LYCORIS_MODULE}" with '
                           f'{", ".join(_LYCORIS[choice])}; network_module / network_args here say otherwise '
                           f'({clash[0] + "=" + args[clash[0]] if clash else config.network_module}): remove one.')
    config.network_module = LYCORIS_MODULE
    extra = [f"{k}={v}" for k, v in wanted.items() if k not in args]
    if "preset" not in args:
        extra.append("preset=full" if config.conv_dim or "conv_dim" in args else "preset=attn-mlp")
    given = config.network_args.split() if isinstance(config.network_args, str) else list(config.network_args or [])
    config.network_args = given + extra
