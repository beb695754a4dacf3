"""kohya's three LoRA dropouts on peft's LoRA layers, as forward hooks (training mode only).

kohya's LoRAModule.forward: ``lx = down(x)``; neuron dropout (``network_dropout``) on ``lx``;
rank dropout drops whole ranks per sample and scales the rest by 1/(1-p); module dropout skips
the module's LoRA entirely for that step. peft's own ``lora_dropout`` drops the *input* instead,
so it stays 0 and these hooks sit on ``lora_A`` (down) / ``lora_B`` (up)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _down_hook(neuron: float, rank: float):
    def hook(module, inputs, out):
        if not module.training:
            return out
        if neuron:
            out = F.dropout(out, p=neuron, training=True)
        if rank:
            mask = (torch.rand((out.shape[0], out.shape[1] if out.ndim == 4 else out.shape[-1]),
                               device=out.device) > rank).to(out.dtype)
            if out.ndim == 3:  # [B, tokens, rank]
                mask = mask.unsqueeze(1)
            elif out.ndim == 4:  # conv: [B, rank, H, W]
                mask = mask[:, :, None, None]
            out = out * mask / (1.0 - rank)
        return out
    return hook


def _module_hook(p: float):
    def hook(module, inputs, out):
        if module.training and torch.rand(1).item() < p:
            return out * 0.0  # this step trains without the module's LoRA, as kohya's skip does
        return out
    return hook


def add_dropouts(modules, adapter_name: str, neuron: float = 0.0, rank: float = 0.0, module: float = 0.0) -> list:
    """Hook kohya's dropouts into every LoRA layer of ``modules`` for ``adapter_name``; returns the
    hook handles (remove them to turn the dropouts off)."""
    from peft.tuners.lora import LoraLayer

    handles = []
    if not (neuron or rank or module):
        return handles
    for root in modules:
        for layer in root.modules():
            if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
                continue
            if neuron or rank:
                handles.append(layer.lora_A[adapter_name].register_forward_hook(_down_hook(neuron, rank)))
            if module:
                handles.append(layer.lora_B[adapter_name].register_forward_hook(_module_hook(module)))
    return handles
