"""A short full-weight pre-training of a tiny UNet, so it is a denoiser like a real base model.

A UNet with random weights predicts noise no better than zero; a LoRA on its attention can't
fix that, so nothing would show whether LoRA training works. A few hundred steps on painted
shapes make the tiny model denoise, and LoRA training then behaves as on a real model.
"""

from __future__ import annotations

import contextlib
import random

import torch
from PIL import Image, ImageDraw

from ..data.images import to_tensor

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
           "white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square")


def painted_batch(rng: random.Random, count: int, size: int) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    for _ in range(count):
        fg, bg = rng.sample(list(COLOURS), 2)
        shape = rng.choice(SHAPES)
        img = Image.new("RGB", (size, size), COLOURS[bg])
        r = rng.randint(size // 6, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=COLOURS[fg])
        images.append(to_tensor(img))
        captions.append(f"a {fg} {shape} on a {bg} background")
    return torch.stack(images), captions


def pretrain(family, pipe, steps: int = 150, batch: int = 4, size: int = 64, seed: int = 0) -> list[float]:
    """Train every UNet weight for ``steps`` steps on painted shapes; returns the losses."""
    from ..models.loader import LoadedModel
    from ..train.step import diffusion_loss, encode_latents, sample_noise

    model = LoadedModel(family, pipe, "tiny", torch.float32)
    unet = pipe.unet
    unet.requires_grad_(True)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    scheduler = family.training_scheduler()
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    losses = []
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            pixels, captions = painted_batch(rng, batch, size)
            latents = encode_latents(pipe.vae, pixels, gen)
            cond = family.encode_text(pipe, captions, torch.device("cpu"))
            ids = torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32)
            noise, timesteps = sample_noise(latents, gen, scheduler.config.num_train_timesteps)
            loss = diffusion_loss(model, scheduler, latents, cond, ids if family.uses_time_ids else None,
                                  noise, timesteps, contextlib.nullcontext())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    unet.requires_grad_(False)
    unet.eval()
    return losses
