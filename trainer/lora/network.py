"""LoRA layers on the UNet and the CLIP text encoders through peft (kohya's init: down random,
up zero)."""

from __future__ import annotations

from collections import Counter

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


def _exact(path: str) -> str:
    return f"^{path.replace('.', '[.]')}$"


def add_lora_modules(unet, modules: dict[str, tuple[int, float]], adapter_name: str = ADAPTER,
                     dropout: float = 0.0) -> list:
    """Inject LoRA into exactly ``modules`` ({path: (rank, alpha)}) of ``unet`` (a diffusers model or
    a text encoder); return the trainable parameters (kept in fp32)."""
    from diffusers import ModelMixin
    from peft import LoraConfig, inject_adapter_in_model

    drop_adapter(unet, adapter_name)  # training again on the same pipeline starts a fresh LoRA
    if not modules:
        raise RuntimeError(f"LoRA matched no module of {type(unet).__name__}")
    (rank, alpha), _ = Counter(modules.values()).most_common(1)[0]
    others = {path: ra for path, ra in modules.items() if ra != (rank, alpha)}
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(modules),
                        rank_pattern={_exact(p): int(r) for p, (r, _) in others.items()},
                        alpha_pattern={_exact(p): float(a) for p, (_, a) in others.items()},
                        lora_dropout=float(dropout), init_lora_weights=True)
    if isinstance(unet, ModelMixin):  # diffusers keeps its own adapter bookkeeping
        unet.add_adapter(config, adapter_name=adapter_name)
    else:  # see add_text_encoder_lora: peft itself, not transformers' version-gated wrapper
        inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    return _trainable(unet, adapter_name, list(modules)[:3])


def add_unet_lora(unet, rank: int, alpha: float, targets: list[str], adapter_name: str = ADAPTER,
                  conv_rank: int = 0, conv_alpha: float = 1.0, conv_targets: list[str] = (),
                  dropout: float = 0.0) -> list:
    """LoRA on the modules whose names end with ``targets`` (and, with ``conv_rank``, on the convs
    ending with ``conv_targets`` at their own rank/alpha): a hand-picked set, for tools and tests;
    training builds kohya's set (targets.unet_targets + add_lora_modules)."""
    modules = {name.removesuffix(".base_layer"): (int(rank), float(alpha)) for name, module in unet.named_modules()
               if type(module) in (torch.nn.Linear, torch.nn.Conv2d) and ".lora_" not in name
               and any(name.removesuffix(".base_layer").endswith("." + t) for t in targets)}
    for name in (conv_module_names(unet, list(conv_targets)) if conv_rank else []):
        modules[name] = (int(conv_rank), float(conv_alpha))
    return add_lora_modules(unet, modules, adapter_name, dropout)


def add_text_encoder_lora(encoder, rank: int, alpha: float, adapter_name: str = ADAPTER,
                          dropout: float = 0.0, modules: dict | None = None) -> list:
    """LoRA on a CLIP text encoder's attention and MLP linears (kohya's set), or on ``modules``
    ({path: (rank, alpha)}); returns the trainable parameters.

    Injected by peft itself, not through transformers' ``add_adapter``: its peft version gate
    moves between releases (transformers 5.24 refuses peft < 0.22 while the index's newest
    peft is 0.21.2), and peft's own API is what that wrapper calls anyway."""
    from .targets import text_encoder_targets

    return add_lora_modules(encoder, modules if modules is not None else text_encoder_targets(encoder, rank, alpha),
                            adapter_name, dropout)


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
