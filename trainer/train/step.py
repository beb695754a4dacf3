"""One diffusion training step: add the family's noise, predict, MSE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .loss_weights import apply_loss_weights
from .noise import diffusion_loss_fn, huber_threshold, input_perturbation, make_noise, sample_timesteps



def batch_time_ids(family, batch, width: int, height: int) -> torch.Tensor | None:
    """Per-sample SDXL/Kolors time ids from a batch's original sizes and crop offsets."""
    if not family.uses_time_ids:
        return None
    target = batch.target_size or (height, width)
    return torch.stack([family.time_ids(orig, crop, target)
                        for orig, crop in zip(batch.original_sizes, batch.crops)])


def draw_noise(latents: torch.Tensor, generator: torch.Generator, scheduler, config):
    """Noise (with the config's offset / multires options) and timesteps in its range."""
    noise = make_noise(latents, generator, config.noise_offset, config.noise_offset_random_strength,
                       config.multires_noise_iterations, config.multires_noise_discount,
                       config.adaptive_noise_scale)
    timesteps = sample_timesteps(latents.shape[0], generator, scheduler.config.num_train_timesteps,
                                 config.min_timestep, config.max_timestep, latents.device)
    return noise.to(latents.device, latents.dtype), timesteps


def draw_input_noise(noise: torch.Tensor, generator: torch.Generator, config) -> torch.Tensor | None:
    """The noise for the UNet's input when ip_noise_gamma is set (drawn after the timesteps, as
    kohya draws it); None otherwise: the input takes ``noise`` itself."""
    return input_perturbation(noise, generator, config.ip_noise_gamma, config.ip_noise_gamma_random_strength)


def diffusion_loss(model, scheduler, latents, cond, time_ids, noise, timesteps, autocast,
                   config=None, sample_weights: torch.Tensor | None = None,
                   input_noise: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Loss between the UNet's prediction and the target (epsilon, or v for v-prediction): MSE,
    or the config's loss_type, weighted as kohya weights it (loss_weights.py).
    ``input_noise`` (ip_noise_gamma) noises the input instead of ``noise``; the target keeps ``noise``.
    ``masks`` [B, 1, H, W] (white = train): kohya's masked loss (masked_loss.py)."""
    unet = model.unet
    noisy = scheduler.add_noise(latents, noise if input_noise is None else input_noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    # diffusers' unet.dtype / unet.device walk every module (16 ms each on SDXL with a LoRA)
    weight = next(unet.parameters())
    dtype, device = weight.dtype, weight.device
    kwargs = model.family.unet_kwargs(model.pipe, cond.to(device, dtype),
                                      None if time_ids is None else time_ids.to(device, dtype))
    with autocast:
        pred = unet(noisy.to(dtype), timesteps.to(device), **kwargs).sample
    if config is None:
        if masks is not None:
            return diffusion_loss_fn(pred, target, "l2", masks=masks).mean()
        return F.mse_loss(pred.float(), target.float())
    huber_c = config.huber_c
    if config.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_threshold(scheduler, timesteps, config.huber_c, config.huber_schedule, config.huber_scale)
    per_sample = diffusion_loss_fn(pred, target, config.loss_type, huber_c, masks)
    return apply_loss_weights(per_sample, scheduler, timesteps, config, sample_weights).mean()


def sample_noise(latents: torch.Tensor, generator: torch.Generator, num_timesteps: int):
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
    return noise, timesteps
