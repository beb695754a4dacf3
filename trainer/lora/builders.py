"""The network a run trains, built by the builder its ``network_module`` names.

A builder injects its layers into the UNet (and the text encoders the run trains) and returns a
``Network``: everything the run set-up and the step loop need from it, so a new kind of network
(LyCORIS next) is one more builder here instead of more lines in the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import TrainerError
from ..families.base import CONV_TARGETS
from .kohya_format import fold_alpha, peft_to_kohya, text_encoder_to_kohya
from .network import (ADAPTER, add_text_encoder_lora, add_unet_lora, autocast_lora_inputs, conv_module_names,
                      lora_state_dict)


@dataclass
class Network:
    params: list[torch.Tensor]  # every trainable tensor, UNet's first
    groups: list[dict]  # optimizer param groups, each with its own lr
    trainable: dict[str, torch.Tensor]  # the same tensors by name: what a resume state holds
    text_encoders: list[str]  # pipeline attributes of the text encoders it trains
    state_dicts: Callable[[], tuple[dict, dict]]  # (kohya-named tensors, diffusers-named, alpha folded)
    autocast: Callable[[object], object]  # the run's autocast -> the one its layers run under


def trained_text_encoders(model, config) -> list[str]:
    """The pipeline attributes of the text encoders that get a LoRA (CLIP families only)."""
    if not config.trains_text_encoder or model.family.name == "kolors":
        return []
    return [name for name in model.family.text_parts if name.startswith("text_encoder")]


def build_lora(model, config, text_encoders: list[str]) -> Network:
    """kohya's ``networks.lora`` through peft: LoRA on the family's UNet targets (+ conv LoRA with
    ``conv_dim``) and on the CLIP attention/MLP linears of ``text_encoders``."""
    unet = model.unet
    params = add_unet_lora(unet, config.network_dim, config.network_alpha, model.family.lora_targets,
                           conv_rank=config.conv_dim, conv_alpha=config.conv_alpha, conv_targets=CONV_TARGETS,
                           dropout=config.network_dropout)
    groups = [{"params": params, "lr": config.unet_lr or config.learning_rate}]
    trainable = {f"unet.{n}": p for n, p in unet.named_parameters() if p.requires_grad}
    for name in text_encoders:
        encoder = getattr(model.pipe, name)
        te_params = add_text_encoder_lora(encoder, config.network_dim, config.network_alpha,
                                          dropout=config.network_dropout)
        groups.append({"params": te_params, "lr": config.text_encoder_lr})
        trainable.update({f"{name}.{n}": p for n, p in encoder.named_parameters() if p.requires_grad})
        params = params + te_params
        encoder.train()
    return Network(params, groups, trainable, list(text_encoders),
                   lambda: _lora_state_dicts(model, config, text_encoders),
                   lambda autocast: autocast_lora_inputs(autocast, unet))


def _lora_state_dicts(model, config, text_encoders: list[str]) -> tuple[dict, dict]:
    unet, family = model.unet, model.family
    convs = conv_module_names(unet, CONV_TARGETS) if config.conv_dim else []
    tensors = peft_to_kohya(lora_state_dict(unet, ADAPTER), config.network_alpha,
                            conv_modules=convs, conv_alpha=config.conv_alpha)
    conv_set = set(convs)
    diffusers = fold_alpha(lora_state_dict(unet, ADAPTER), "unet",
                           lambda path: config.conv_alpha if path in conv_set else config.network_alpha)
    for name in text_encoders:
        state = lora_state_dict(getattr(model.pipe, name), ADAPTER)
        tensors.update(text_encoder_to_kohya(state, name, family.name, config.network_alpha))
        diffusers.update(fold_alpha(state, name, lambda path: config.network_alpha))
    return tensors, diffusers


NETWORK_BUILDERS: dict[str, Callable[..., Network]] = {"networks.lora": build_lora}


def network_builder(network_module: str) -> Callable[..., Network]:
    """The builder for ``network_module``; any other name stops the run before anything loads."""
    try:
        return NETWORK_BUILDERS[network_module]
    except KeyError:
        known = ", ".join(f'"{name}"' for name in NETWORK_BUILDERS)
        raise TrainerError(f'network_module "{network_module}" is not one this trainer builds: use {known}.') \
            from None
