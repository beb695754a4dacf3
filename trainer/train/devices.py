"""Keeping encoders off the training device once their outputs are cached (GPU memory goes to
the UNet), and bringing them back for sampling."""

from __future__ import annotations

import contextlib

import torch


def _encoders(model) -> list:
    return [model.vae, *model.text_encoders()]


def offload_cached_encoders(model, config, device: torch.device) -> None:
    """Move the VAE / text encoders to the CPU when everything they would compute is cached."""
    if device.type == "cpu":
        return
    if config.cache_latents:
        model.vae.to("cpu")
    if config.cache_text_encoder_outputs:
        for encoder in model.text_encoders():
            encoder.to("cpu")
    torch.cuda.empty_cache()


def restore_encoders(model, device: torch.device) -> None:
    for module in _encoders(model):
        module.to(device)


def release_text_encoders(model) -> None:
    """Drop the text encoders (Kolors' ChatGLM3 is 12 GB in fp16) once their outputs are cached."""
    for name in model.family.text_parts:
        if name.startswith("text_encoder"):
            setattr(model.pipe, name, None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def encoders_on(model, device: torch.device):
    """All encoders on ``device`` inside the block (for sampling), back where they were after."""
    before = [(m, next(m.parameters()).device) for m in _encoders(model)]
    for module, _ in before:
        module.to(device)
    try:
        yield
    finally:
        for module, where in before:
            module.to(where)
