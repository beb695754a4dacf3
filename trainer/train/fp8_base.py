"""kohya's fp8_base / fp8_base_unet: the frozen UNet (and, for fp8_base, the text encoders) keep
their Linear/Conv weights in torch.float8_e4m3fn and compute in the mixed-precision dtype; the
LoRA layers keep theirs.

kohya casts the whole UNet to fp8 and lets CUDA autocast make a compute-dtype copy of each weight
as it is used. That also puts the norm layers in fp8, which CPU autocast does not upcast
(group_norm refuses them), and needs autocast wherever the model runs (sampling here runs
without). diffusers' layerwise casting (ModelMixin.enable_layerwise_casting) upcasts per layer
without autocast, but in place: autograd keeps the Parameter it saw, which is fp8 again by the
backward, so each Conv2d's backward runs on fp8 storage (measured 25x slower on the CPU, and a
dtype mismatch for other kernels). So each layer here gets a pair of hooks that hand its forward
a fresh compute-dtype copy (what autocast's copy is in kohya, and what autograd keeps) and put
the fp8 Parameter back after. Like kohya, text-encoder embeddings stay in the weight dtype; the
norms stay too, and the UNet's conv_in (11k values), whose dtype diffusers reports as the
UNet's."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import TrainerError

FP8 = torch.float8_e4m3fn
# module paths that keep their dtype: norms, the LoRA's own layers, and per part below
_SKIP = ("norm", "lora_")
_SKIP_UNET = ("conv_in",)
_SKIP_TEXT = ("embed",)


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def store_base_in_fp8(model, config, compute_dtype: torch.dtype, log: Callable[[str], None] = print) -> dict:
    """Apply fp8_base / fp8_base_unet to ``model`` in place (after the LoRA is injected); returns
    {part: (bytes before, bytes after)}. The weights stay rounded to fp8 for as long as the model
    is loaded: reload it to train or sample without."""
    if not (config.fp8_base or config.fp8_base_unet):
        return {}
    if getattr(model, "host", None) is not None:
        raise TrainerError("fp8_base / fp8_base_unet would round the weights ComfyUI holds for every other node: "
                           "turn it off, or set CheckpointLoaderSimple's weight_dtype (Load Diffusion Model) to fp8 "
                           "instead.")
    parts = [("unet", model.unet)]
    if not config.fp8_base_unet:  # kohya: fp8_base_unet keeps the text encoders in the weight dtype
        parts += [(name, getattr(model.pipe, name, None)) for name in model.family.text_parts
                  if name.startswith("text_encoder")]
    sizes = {}
    for name, module in parts:
        if module is None:  # released after caching
            continue
        before = weight_bytes(module)
        skip = _SKIP + (_SKIP_UNET if name == "unet" else _SKIP_TEXT)
        for path, layer in module.named_modules():
            if type(layer) in (torch.nn.Linear, torch.nn.Conv2d) and not any(s in path for s in skip):
                Fp8Layer.attach(layer, compute_dtype)
        sizes[name] = (before, weight_bytes(module))
        log(f"fp8_base: {name} weights stored in float8 ({before / 2**20:.1f} -> {sizes[name][1] / 2**20:.1f} MiB), "
            f"computed in {str(compute_dtype).removeprefix('torch.')}")
    return sizes


class Fp8Layer:
    """One layer's weight and bias: fp8 Parameters between forwards, fresh compute-dtype copies
    during its forward."""

    NAMES = ("weight", "bias")

    def __init__(self, compute_dtype: torch.dtype):
        self.compute_dtype = compute_dtype
        self.stored: dict[str, torch.nn.Parameter] = {}

    @classmethod
    def attach(cls, layer: torch.nn.Module, compute_dtype: torch.dtype) -> None:
        if getattr(layer, "_fp8_layer", None) is not None:  # a model trained before keeps its fp8
            layer._fp8_layer.compute_dtype = compute_dtype
            return
        hooks = cls(compute_dtype)
        for name in cls.NAMES:
            param = getattr(layer, name, None)
            if param is not None:
                setattr(layer, name, torch.nn.Parameter(param.detach().to(FP8), requires_grad=False))
        layer.register_forward_pre_hook(hooks.before)
        layer.register_forward_hook(hooks.after)
        layer._fp8_layer = hooks

    def before(self, layer, args):
        for name in self.NAMES:
            param = getattr(layer, name, None)
            if param is not None and param.dtype == FP8:
                self.stored[name] = param
                setattr(layer, name, torch.nn.Parameter(param.to(self.compute_dtype), requires_grad=False))

    def after(self, layer, args, output):
        for name, param in self.stored.items():
            setattr(layer, name, param)
        self.stored.clear()
