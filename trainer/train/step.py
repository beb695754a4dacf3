"""One diffusion training step: add the family's noise, predict, MSE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F



def batch_time_ids(family, batch, width: int, height: int) -> torch.Tensor | None:
    """Per-sample SDXL/Kolors time ids from a batch's original sizes and crop offsets."""
    if not family.uses_time_ids:
        return None
    return torch.stack([family.time_ids(orig, crop, (height, width))
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
