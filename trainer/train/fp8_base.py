"""kohya's fp8_base / fp8_base_unet: the frozen UNet (and, for fp8_base, the text encoders) keep
their weights in torch.float8_e4m3fn and compute in the mixed-precision dtype; the LoRA layers
keep theirs.

kohya casts the whole UNet to fp8 and lets CUDA autocast upcast each weight as it is used. That
also puts the norm layers in fp8, which CPU autocast does not upcast (group_norm refuses them).
diffusers' layerwise casting (ModelMixin.enable_layerwise_casting, hooks.apply_layerwise_casting)
does the same per Linear/Conv/Embedding: upcast for the layer's forward, back to fp8 after. It
skips norms and peft's LoRA layers, and its gradients are those of the fp8-rounded weights to
the bit (measured on the tiny UNet). Like kohya, the text encoders' token and position
embeddings stay in the mixed-precision dtype."""

from __future__ import annotations

from typing import Callable

import torch

FP8 = torch.float8_e4m3fn


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def store_base_in_fp8(model, config, compute_dtype: torch.dtype, log: Callable[[str], None] = print) -> dict:
    """Apply fp8_base / fp8_base_unet to ``model`` in place (after the LoRA is injected); returns
    {part: (bytes before, bytes after)}. The weights stay rounded to fp8 for as long as the model
    is loaded: reload it to train or sample without."""
    if not (config.fp8_base or config.fp8_base_unet):
        return {}
    parts = [("unet", model.unet)]
    if not config.fp8_base_unet:  # kohya: fp8_base_unet keeps the text encoders in the weight dtype
        parts += [(name, getattr(model.pipe, name, None)) for name in model.family.text_parts
                  if name.startswith("text_encoder")]
    sizes = {}
    for name, module in parts:
        if module is None:  # released after caching
            continue
        before = weight_bytes(module)
        if not any(p.dtype == FP8 for p in module.parameters()):  # a model trained before keeps its hooks
            _layerwise_fp8(module, compute_dtype, is_unet=name == "unet")
            _keep_peft_input_casts(module)
        sizes[name] = (before, weight_bytes(module))
        log(f"fp8_base: {name} weights stored in float8 ({before / 2**20:.1f} -> {sizes[name][1] / 2**20:.1f} MiB), "
            f"computed in {str(compute_dtype).removeprefix('torch.')}")
    return sizes


def _layerwise_fp8(module: torch.nn.Module, compute_dtype: torch.dtype, is_unet: bool) -> None:
    if is_unet and hasattr(module, "enable_layerwise_casting"):  # skips norms and peft's layers itself
        module.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype)
        return
    from diffusers.hooks import apply_layerwise_casting
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer
    from peft.tuners.lora.layer import LoraLayer

    # searched in module paths: norms, the adapters' own layers and (text encoders) the embeddings
    skip = ("norm", *LoraLayer.adapter_layer_names, *LoHaLayer.adapter_layer_names,
            *LoKrLayer.adapter_layer_names) + (() if is_unet else ("embed",))
    # bitsandbytes' quantized layers (a 4-bit ChatGLM) are no plain weights to cast
    quantized = tuple({type(m) for m in module.modules() if type(m).__module__.startswith("bitsandbytes")})
    apply_layerwise_casting(module, FP8, compute_dtype, skip_modules_pattern=skip,
                            skip_modules_classes=quantized or None)


def _keep_peft_input_casts(module: torch.nn.Module) -> None:
    """diffusers' layerwise casting also stops peft casting a LoRA layer's input to the LoRA's
    dtype (written for LoRAs kept in the compute dtype). Ours is fp32: outside autocast (sampling)
    its input must be cast, as without fp8; in training AutocastLoraInputs skips the cast anyway."""
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for name, hook in list(getattr(registry, "hooks", {}).items()):
            if type(hook).__name__ == "PeftInputAutocastDisableHook":
                registry.remove_hook(name, recurse=False)
