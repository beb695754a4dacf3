"""kohya's masked loss (custom_train_functions.apply_masked_loss): the element-wise loss times the
mask reduced to the loss's size by area interpolation, then the usual mean over C, H, W.

So a sample's loss is sum(loss * mask) / (C * h * w), not divided by the mask's area: an image
whose mask covers a quarter of it weighs about a quarter as much (kohya's normalisation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def apply_masked_loss(loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``loss`` [B, C, h, w] element-wise, ``masks`` [B, 1, H, W] in 0..1 (white = train)."""
    mask = F.interpolate(masks.to(loss.device, loss.dtype), size=loss.shape[2:], mode="area")
    return loss * mask
