"""One diffusion training step: encode, add the family's noise, predict, MSE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batches import Batch


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    pixels = pixels.to(vae.device, vae.dtype)
    dist = vae.encode(pixels).latent_dist
    noise = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype).to(dist.mean.device)
    latents = dist.mean + dist.std * noise
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def batch_time_ids(family, pipe, batch: Batch, width: int, height: int) -> torch.Tensor | None:
    if not family.uses_time_ids:
        return None
    return torch.stack([family.time_ids(pipe, orig, crop, (height, width))
                        for orig, crop in zip(batch.original_sizes, batch.crops)])


def diffusion_loss(model, scheduler, latents, cond, time_ids, noise, timesteps, autocast) -> torch.Tensor:
    """MSE between the UNet's prediction and the target (epsilon, or v for v-prediction)."""
    unet = model.unet
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    dtype = unet.dtype
    kwargs = model.family.unet_kwargs(model.pipe, cond.to(unet.device, dtype),
                                      None if time_ids is None else time_ids.to(unet.device, dtype))
    with autocast:
        pred = unet(noisy.to(dtype), timesteps.to(unet.device), **kwargs).sample
    return F.mse_loss(pred.float(), target.float())


def sample_noise(latents: torch.Tensor, generator: torch.Generator, num_timesteps: int):
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
    return noise, timesteps
