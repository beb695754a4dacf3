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
