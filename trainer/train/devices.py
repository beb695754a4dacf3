"""Keeping the VAE / text encoders out of the way once their outputs are cached, and bringing
them back for sampling.

On a GPU they move to the CPU (GPU memory goes to the UNet). On the CPU their weights are paged
out to a hidden file in the cache or output folder (trainer/models/paging.py): the modules stay where
they are and work as before, but their memory is only used again while they run (sampling,
validation, generating with the returned model).

A model whose weights belong to a host (ComfyUI's loaded checkpoint, models/host_weights.py) is
never moved or paged: that would copy the host's weights. It stays where the host keeps it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..models import paging


def _hosted(model) -> bool:
    return getattr(model, "host", None) is not None


def _encoders(model) -> list:
    return [m for m in (model.vae, *model.text_encoders()) if m is not None]


def _cached_encoders(model, config) -> list:
    """The frozen encoders whose every output this run has cached."""
    modules = ([model.vae] if config.cache_latents else []) + \
        (model.text_encoders() if config.cache_text_encoder_outputs else [])
    return [m for m in modules if m is not None and not any(p.requires_grad for p in m.parameters())]


def page_folder(config) -> Path:
    """The disk cache's folder when one is set, else the run's output folder (page files are
    hidden and deleted when training ends; never the system temp folder, often RAM-backed)."""
    return Path(config.cache_dir or config.output_dir)


def encoders_to_page(model, config, device: torch.device) -> list:
    """The encoders offload_cached_encoders will page out to files (on the CPU only)."""
    return _cached_encoders(model, config) if device.type == "cpu" and not _hosted(model) else []


def offload_cached_encoders(model, config, device: torch.device) -> None:
    """GPU: move the cached encoders to the CPU. CPU: page their weights out of RAM."""
    if _hosted(model):
        return
    modules = _cached_encoders(model, config)
    if device.type == "cpu":
        for module in modules:
            paging.page_out(module, page_folder(config))
        return
    for module in modules:
        module.to("cpu")
    torch.cuda.empty_cache()


def restore_encoders(model, device: torch.device) -> None:
    """Everything back on ``device`` for generating; paged weights stay mapped, their files go."""
    if _hosted(model):
        return
    for module in _encoders(model):
        module.to(device)
        paging.forget(module)


def release_text_encoders(model) -> None:
    """Drop the text encoders (Kolors' ChatGLM3 is 12 GB in fp16) once their outputs are cached."""
    for name in model.family.text_parts:
        if name.startswith("text_encoder"):
            module = getattr(model.pipe, name)
            if module is not None:
                paging.forget(module)
            setattr(model.pipe, name, None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def encoders_on(model, device: torch.device):
    """All encoders on ``device`` inside the block (for sampling), back where they were after;
    weights paged out before are paged out again."""
    if _hosted(model):
        yield
        return
    before = [(m, next(m.parameters()).device) for m in _encoders(model)]
    for module, _ in before:
        module.to(device)
    try:
        yield
    finally:
        for module, where in before:
            module.to(where)
            paging.drop_pages(module)


def caching_in_order(model, config, device: torch.device) -> bool:
    """kohya's order on a GPU: while the caches fill, the U-Net waits on the CPU and each encoder
    is on the GPU alone (SDXL at 1024² then fits 8 GB; Kolors peaks at ChatGLM alone, not ChatGLM
    + U-Net). Returns whether the caller must call ``training_placement`` after caching."""
    if _hosted(model):
        return False
    if device.type == "cpu" or not (config.cache_latents or config.cache_text_encoder_outputs):
        model.to(device)
        return False
    model.to("cpu")
    if config.cache_latents:
        model.vae.to(device)
    torch.cuda.empty_cache()
    return True


def text_caching_placement(model, config, device: torch.device) -> None:
    """Between caching latents and caching text: the VAE off the GPU, the text encoders on."""
    if device.type == "cpu" or _hosted(model):
        return
    if config.cache_latents:
        model.vae.to("cpu")
        torch.cuda.empty_cache()
    for encoder in model.text_encoders():
        encoder.to(device)


def training_placement(model, config, device: torch.device) -> None:
    """After caching: the U-Net and every encoder that still runs each step onto the GPU."""
    if _hosted(model):
        return
    model.unet.to(device)
    model.vae.to("cpu" if config.cache_latents else device)
    for encoder in model.text_encoders():
        encoder.to("cpu" if config.cache_text_encoder_outputs else device)
