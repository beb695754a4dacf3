"""What a network builder hands the run: its trainable tensors, optimizer groups and savers.

Its own module so every builder (builders.py, lycoris_builder.py) depends on it and none on another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Network:
    params: list[torch.Tensor]  # every trainable tensor, UNet's first
    groups: list[dict]  # optimizer param groups, each with its own lr
    trainable: dict[str, torch.Tensor]  # the same tensors by name: what a resume state holds
    text_encoders: list[str]  # pipeline attributes of the text encoders it trains
    state_dicts: Callable[[], tuple[dict, dict]]  # (kohya-named tensors, diffusers-named, alpha folded)
    autocast: Callable[[object], object]  # the run's autocast -> the one its layers run under
