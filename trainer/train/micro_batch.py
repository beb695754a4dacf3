"""One micro-batch of a (possibly multi-process) run: this rank's slice of a global batch.

Every random number is drawn for the whole global batch, in the same order on every rank, and
then sliced: the latent-sampling noise, the diffusion noise and timesteps, the caption shuffles
and the augmentation seeds. So N processes with batch b draw exactly what one process with batch
N x b draws, and the generators stay identical on every rank (any rank's state resumes the run).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .step import batch_time_ids, draw_input_noise, draw_noise


@dataclass
class MicroBatch:
    indices: list[int]  # this rank's items (may be empty: a bucket's small last batch)
    share: float  # len(indices) / items in the global batch: this rank's weight in the mean loss
    latents: torch.Tensor | None = None
    cond: object = None
    time_ids: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    input_noise: torch.Tensor | None = None  # ip_noise_gamma: the UNet input's noise (target keeps noise)
    masks: torch.Tensor | None = None  # [b, 1, h, w] loss masks (masked_loss), None: none in this batch


def draw_micro_batch(global_indices: list[int], mine: slice, run, gen: torch.Generator,
                     caption_rng: random.Random) -> MicroBatch:
    """``run`` is the RunSetup (run_setup.py); read here: config, dataset, family, scheduler,
    latents_from, text_from, caption_for (index, rng) -> caption, device, width, height."""
    count = len(global_indices)
    local = global_indices[mine]
    # the caption rng is consumed for the whole global batch on every rank
    captions = [run.caption_for(i, caption_rng) for i in global_indices][mine]
    rngs = None
    if run.latents_from.augmenting and not run.latents_from.cache:
        seeds = [caption_rng.getrandbits(64) for _ in global_indices]
        rngs = [random.Random(seed) for seed in seeds[mine]]
    shape = run.latents_from.latent_shape(global_indices[0])
    eps = torch.randn((count, *shape), generator=gen)
    batch = run.latents_from.batch(local, None, run.device, eps=eps[mine], rngs=rngs) if local else None
    # the diffusion noise sees the whole global batch's shape; only this rank's rows are real
    # latents (adaptive noise offset reads each row's own latent mean, so the others may be zero)
    full = torch.zeros((count, *shape), device=run.device,
                       dtype=batch.latents.dtype if batch else torch.float32)
    if batch is not None:
        full[mine] = batch.latents
    noise, timesteps = draw_noise(full, gen, run.scheduler, run.config)
    input_noise = draw_input_noise(noise, gen, run.config)
    if not local:
        return MicroBatch([], 0.0)
    weights = torch.tensor([run.config.prior_loss_weight if run.dataset.items[i].is_reg else 1.0 for i in local])
    return MicroBatch(local, len(local) / count, batch.latents, run.text_from.batch(captions, run.device),
                      batch_time_ids(run.family, batch, run.width, run.height), noise[mine], timesteps[mine],
                      weights, None if input_noise is None else input_noise[mine], batch.masks)
