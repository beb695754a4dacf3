"""Loss of a model on a dataset with fixed noise and timesteps: comparable before/after training
(and the basis of a validation loss)."""

from __future__ import annotations

import torch

from ..data.dataset import Dataset
from .precision import resolve_precision
from .sources import LatentSource, TextSource
from .step import batch_time_ids, diffusion_loss, sample_noise


def dataset_loss(model, dataset: Dataset, width: int, height: int, seed: int = 0, draws: int = 4,
                 mixed_precision: str = "no", clip_skip: int | None = None, text_options: dict | None = None) -> float:
    """Mean diffusion loss over every image x ``draws`` (noise, timestep) pairs fixed by ``seed``;
    items with a loss mask count its part only (kohya's masked loss).
    text_options: the run's max_token_length / weighted (caption_options.text_options)."""
    device = model.unet.device
    _, autocast = resolve_precision(mixed_precision, device)
    scheduler = model.family.training_scheduler()
    latents_from = LatentSource(model, dataset, width, height)
    text_from = TextSource(model, clip_skip, options=text_options)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.inference_mode(False), torch.no_grad():
        for index, item in enumerate(dataset.items):
            batch = latents_from.batch([index] * draws, gen, device)
            cond = text_from.batch([item.caption] * draws, device)
            time_ids = batch_time_ids(model.family, batch, width, height)
            noise, timesteps = sample_noise(batch.latents, gen, scheduler.config.num_train_timesteps)
            total += float(diffusion_loss(model, scheduler, batch.latents, cond, time_ids, noise, timesteps, autocast,
                                          masks=batch.masks))
    return total / max(len(dataset.items), 1)


@torch.no_grad()
def dataset_latents(model, dataset: Dataset, width: int, height: int) -> torch.Tensor:
    """The VAE latents (distribution means, scaled) of every image: [N, 4, h, w]."""
    source = LatentSource(model, dataset, width, height)
    return source.batch(list(range(len(dataset.items))), None, model.unet.device).latents
