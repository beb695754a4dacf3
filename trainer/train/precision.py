"""Which dtype the frozen weights use and which autocast wraps the UNet, per device."""

from __future__ import annotations

import contextlib
import warnings

import torch


def resolve_precision(mixed_precision: str, device: torch.device) -> tuple[torch.dtype, object]:
    """(weight dtype, autocast context) for ``mixed_precision`` on ``device``.

    CPUs have no fast fp16 autocast: fp16 falls back to bf16 there with a warning.
    """
    if mixed_precision in ("no", "", None):
        return torch.float32, contextlib.nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn("mixed_precision fp16 is not supported on CPU; training in bf16 instead.", stacklevel=2)
        dtype = torch.bfloat16
    return dtype, torch.autocast(device.type, dtype=dtype)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def lower_network_precision(params, config, weight_dtype: torch.dtype) -> None:
    """kohya's full_fp16 / full_bf16: the LoRA's own weights (and so its gradients and optimizer
    state) in the mixed-precision dtype too. On a CPU, where fp16 runs as bf16, full_fp16 does too."""
    if config.full_fp16 or config.full_bf16:
        for param in params:
            param.data = param.data.to(weight_dtype)


class _Fp16GradScaler(torch.amp.GradScaler):
    """kohya's patch_accelerator_for_fp16_training: unscale fp16 gradients too (torch refuses them,
    expecting fp32 master weights, which full_fp16 leaves out on purpose)."""

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        return super()._unscale_grads_(optimizer, inv_scale, found_inf, True)


def grad_scaler(device: torch.device, weight_dtype: torch.dtype, full_fp16: bool = False) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    cls = _Fp16GradScaler if full_fp16 else torch.amp.GradScaler
    return cls(device.type, enabled=weight_dtype == torch.float16)
