"""Loss of a model on a dataset with fixed noise and timesteps: comparable before/after training
(and the basis of a validation loss)."""

from __future__ import annotations

import torch

from ..data.dataset import Dataset
from .batches import make_batch
from .precision import resolve_precision
from .step import batch_time_ids, diffusion_loss, encode_latents, sample_noise


def dataset_loss(model, dataset: Dataset, width: int, height: int, seed: int = 0, draws: int = 4,
                 mixed_precision: str = "no", clip_skip: int | None = None) -> float:
    """Mean diffusion loss over every image x ``draws`` (noise, timestep) pairs fixed by ``seed``."""
    device = model.unet.device
    _, autocast = resolve_precision(mixed_precision, device)
    scheduler = model.family.training_scheduler()
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    with torch.inference_mode(False), torch.no_grad():
        for index in range(len(dataset.items)):
            batch = make_batch(dataset, [index] * draws, width, height)
            latents = encode_latents(model.vae, batch.pixels, gen).to(device)
            cond = model.family.encode_text(model.pipe, batch.captions, device, clip_skip)
            time_ids = batch_time_ids(model.family, model.pipe, batch, width, height)
            noise, timesteps = sample_noise(latents, gen, scheduler.config.num_train_timesteps)
            total += float(diffusion_loss(model, scheduler, latents, cond, time_ids, noise, timesteps, autocast))
            count += 1
    return total / max(count, 1)


@torch.no_grad()
def dataset_latents(model, dataset: Dataset, width: int, height: int) -> torch.Tensor:
    """The VAE latents (distribution means, scaled) of every image: [N, 4, h, w]."""
    batch = make_batch(dataset, list(range(len(dataset.items))), width, height)
    vae = model.vae
    mean = vae.encode(batch.pixels.to(vae.device, vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (mean - shift) * vae.config.scaling_factor
