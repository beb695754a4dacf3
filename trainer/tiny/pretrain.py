"""A stand-in for a base model's pretraining, for the demo: teach a tiny model's UNet to denoise
painted shapes (ellipses, rectangles, triangles; never a star) for a few hundred steps.

A freshly built tiny UNet has random weights, and a LoRA cannot turn a random network into a
denoiser: its adapters leave biases, norms, conv_in/conv_out and the time embedding as they
are (measured: a full-rank update of just the adapted weights still misses the noise by 0.17
MSE at t=999, a full fine-tune by 0.04). After this, as with a real base model, the LoRA only
has to add its concept. With the demo's v-prediction base (demo.py), 200 steps of this bring
the LoRA's samples from 39 to 29 of 255 from the training pictures (4 seeds) and take the
coloured speckle out of their background. Deterministic for a seed (on one machine and thread
count).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image, ImageDraw


def paint_shapes(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """[count, 3, size, size] in -1..1: one to three flat shapes on a flat background."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cx, cy = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(0.1 * size, 0.4 * size, 2)
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
            elif kind == 1:
                draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
            else:
                a = rng.uniform(0, 2 * math.pi)
                draw.polygon([(cx + rx * math.cos(a + k * 2.094), cy + ry * math.sin(a + k * 2.094)) for k in range(3)],
                             fill=colour)
        out.append(np.asarray(img))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1


def pretrain_unet(model, steps: int = 300, size: int = 64, batch: int = 4, lr: float = 1e-3, seed: int = 0,
                  images: int = 256, v_prediction: bool = False, on_step=None) -> list[float]:
    """Train every weight of ``model.unet`` to predict the noise (or v) on painted shapes (empty
    prompt); returns the losses. ``on_step(loss)`` is called after each step. The model is left
    in eval mode, its weights frozen again."""
    from ..train.sources import TextSource
    from ..train.step import diffusion_loss

    unet, vae, family = model.unet, model.vae, model.family
    torch.manual_seed(seed)
    with torch.no_grad():
        pixels = paint_shapes(images, size, seed)
        latents = torch.cat([vae.encode(pixels[i:i + 32]).latent_dist.mean for i in range(0, images, 32)])
        latents = latents * vae.config.scaling_factor
        cond = TextSource(model, None).batch([""] * batch, unet.device)
    time_ids = None
    if family.uses_time_ids:
        time_ids = torch.stack([family.time_ids((size, size), (0, 0), (size, size))] * batch)
    scheduler = family.training_scheduler(v_prediction)
    params = [p for p in unet.parameters()]
    for p in params:
        p.requires_grad_(True)
    unet.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, images, (batch,), generator=gen)
        noise = torch.randn((batch, *latents.shape[1:]), generator=gen)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        loss = diffusion_loss(model, scheduler, latents[pick], cond, time_ids, noise, timesteps, nullcontext())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step:
            on_step(losses[-1])
    for p in params:
        p.requires_grad_(False)
    unet.eval()
    return losses
