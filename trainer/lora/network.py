"""LoRA layers on the UNet through peft (kohya's init: down random, up zero)."""

from __future__ import annotations

import torch

ADAPTER = "lt_lora"


def add_unet_lora(unet, rank: int, alpha: float, targets: list[str], adapter_name: str = ADAPTER) -> list:
    """Inject LoRA into ``unet``'s ``targets``; return the trainable parameters (kept in fp32)."""
    from peft import LoraConfig

    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets),
                        init_lora_weights=True)
    unet.add_adapter(config, adapter_name=adapter_name)
    params = []
    for name, param in unet.named_parameters():
        if f".{adapter_name}." in name and "lora_" in name:
            param.data = param.data.to(torch.float32)
            param.requires_grad_(True)
            params.append(param)
        else:
            param.requires_grad_(False)
    if not params:
        raise RuntimeError(f"LoRA matched no module of the UNet (targets: {targets})")
    return params


def unet_lora_state_dict(unet, adapter_name: str = ADAPTER) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=adapter_name)
