"""LoRA layers on the UNet and the CLIP text encoders through peft (kohya's init: down random,
up zero)."""

from __future__ import annotations

import torch

ADAPTER = "lt_lora"
# kohya's text-encoder targets: the linears of CLIPAttention and CLIPMLP
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def conv_module_names(unet, conv_targets: list[str]) -> list[str]:
    """Names of the Conv2d modules matching ``conv_targets`` (also once peft has wrapped them)."""
    names = []
    for name, module in unet.named_modules():
        name = name.removesuffix(".base_layer")
        if isinstance(module, torch.nn.Conv2d) and any(name.endswith("." + t) for t in conv_targets):
            names.append(name)
    return list(dict.fromkeys(names))


def add_unet_lora(unet, rank: int, alpha: float, targets: list[str], adapter_name: str = ADAPTER,
                  conv_rank: int = 0, conv_alpha: float = 1.0, conv_targets: list[str] = (),
                  dropout: float = 0.0) -> list:
    """Inject LoRA into ``unet``'s ``targets`` (and, with ``conv_rank``, into ``conv_targets`` at
    their own rank/alpha); return the trainable parameters (kept in fp32)."""
    from peft import LoraConfig

    drop_adapter(unet, adapter_name)  # training again on the same pipeline starts a fresh LoRA
    convs = conv_module_names(unet, list(conv_targets)) if conv_rank else []
    patterns = {f"^{name.replace('.', '[.]')}$": None for name in convs}
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets) + convs,
                        rank_pattern={p: int(conv_rank) for p in patterns},
                        alpha_pattern={p: float(conv_alpha) for p in patterns},
                        lora_dropout=float(dropout), init_lora_weights=True)
    unet.add_adapter(config, adapter_name=adapter_name)
    return _trainable(unet, adapter_name, targets)


def add_text_encoder_lora(encoder, rank: int, alpha: float, adapter_name: str = ADAPTER,
                          dropout: float = 0.0) -> list:
    """LoRA on a CLIP text encoder's attention and MLP linears; returns the trainable parameters.

    Injected by peft itself, not through transformers' ``add_adapter``: its peft version gate
    moves between releases (transformers 5.24 refuses peft < 0.22 while the index's newest
    peft is 0.21.2), and peft's own API is what that wrapper calls anyway."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=TEXT_ENCODER_TARGETS,
                        lora_dropout=float(dropout), init_lora_weights=True)
    drop_adapter(encoder, adapter_name)
    inject_adapter_in_model(config, encoder, adapter_name=adapter_name)
    return _trainable(encoder, adapter_name, TEXT_ENCODER_TARGETS)


def drop_adapter(module, adapter_name: str) -> None:
    """Remove the adapter ``adapter_name`` from ``module`` (a diffusers model or any torch module
    peft injected into)."""
    configs = getattr(module, "peft_config", None) or {}
    if adapter_name not in configs:
        return
    if hasattr(module, "delete_adapters"):  # diffusers' models keep their own bookkeeping
        module.delete_adapters(adapter_name)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer) and adapter_name in layer.scaling:
            layer.delete_adapter(adapter_name)
    del configs[adapter_name]
    if not configs:  # as before the first injection: the next one starts without a stale config
        del module.peft_config


def _trainable(module, adapter_name: str, targets) -> list:
    """Make exactly the adapter's LoRA weights trainable, in fp32."""
    params = []
    for name, param in module.named_parameters():
        if f".{adapter_name}." in name and "lora_" in name:
            param.data = param.data.to(torch.float32)
            param.requires_grad_(True)
            params.append(param)
        else:
            param.requires_grad_(False)
    if not params:
        raise RuntimeError(f"LoRA matched no module of {type(module).__name__} (targets: {targets})")
    return params


def lora_state_dict(module, adapter_name: str = ADAPTER) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(module, adapter_name=adapter_name)


class AutocastLoraInputs:
    """``autocast`` plus: the LoRA layers of ``modules`` take their input as it comes.

    peft casts each LoRA layer's input to the LoRA weights' dtype (fp32) and autocast casts it
    straight back to bf16/fp16 for the matmul: two activation-sized copies per layer and step,
    forward and backward, with the same result (the up-cast is exact). Skipping them saved 0-6 %
    of a full-size step on the CPU (docs/benchmarks.md). Outside this context (sampling without
    autocast) peft casts as before."""

    def __init__(self, autocast, *modules):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.autocast = autocast
        self.layers = [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]

    def __enter__(self):
        self.autocast.__enter__()
        for layer in self.layers:
            layer.cast_input_dtype_enabled = False
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.cast_input_dtype_enabled = True
        return self.autocast.__exit__(*exc)


def autocast_lora_inputs(autocast, *modules):
    """``autocast`` that skips peft's input casts in ``modules``' LoRA layers (AutocastLoraInputs),
    or ``autocast`` itself when it is no torch.autocast (fp32 training: nothing is cast)."""
    if not isinstance(autocast, torch.autocast):
        return autocast
    return AutocastLoraInputs(autocast, *modules)
