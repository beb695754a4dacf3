"""The floor: the bare UNet forward + MSE + backward + AdamW step on one prepared batch.

Same model, dtype, autocast, LoRA and batch as the trainer; the latents, conditioning, noise and
timesteps are all computed before the clock starts, so nothing but the UNet's own work (and the
optimizer's) is timed. No training loop can be faster than this on the same batch.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def prepare(model, dataset, resolution: int, batch_size: int, steps: int, seed: int = 0):
    """The first batch's scaled latents and conditioning, plus ``steps`` (noisy, target, t) triples."""
    from trainer.train.sources import LatentSource, TextSource
    from trainer.train.step import batch_time_ids

    indices = list(range(batch_size))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        batch = LatentSource(model, dataset, resolution, resolution).batch(indices, gen, torch.device("cpu"))
        cond = TextSource(model, None).batch([dataset.items[i].caption for i in indices], torch.device("cpu"))
    time_ids = batch_time_ids(model.family, batch, resolution, resolution)
    scheduler = model.family.training_scheduler()
    draws = []
    for _ in range(steps):
        noise = torch.randn(batch.latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        draws.append((scheduler.add_noise(batch.latents, noise, t), noise, t))
    dtype = model.unet.dtype
    kwargs = model.family.unet_kwargs(model.pipe, cond.to(None, dtype), None if time_ids is None else time_ids.to(dtype))
    return [(noisy.to(dtype), target, t) for noisy, target, t in draws], kwargs


def run(model, draws, kwargs, params, autocast) -> list[float]:
    """Seconds of each step over the prepared ``draws``."""
    from trainer.train.host_memory import reuse_freed_memory
    from trainer.train.optim import build_optimizer

    unet = model.unet
    optimizer = build_optimizer("AdamW", [{"params": params, "lr": 1e-4}], 1e-4, log=lambda _: None)
    unet.train()
    with reuse_freed_memory(torch.device("cpu")):  # as train() runs its steps
        return _steps(unet, draws, kwargs, optimizer, autocast)


def _steps(unet, draws, kwargs, optimizer, autocast) -> list[float]:
    times = []
    for noisy, target, t in draws:
        started = time.perf_counter()
        step(unet, noisy, target, t, kwargs, optimizer, autocast)
        times.append(time.perf_counter() - started)
    return times


def step(unet, noisy, target, t, kwargs, optimizer, autocast) -> float:
    """One bare step: forward, MSE, backward, optimizer; returns the optimizer's seconds."""
    with autocast:
        pred = unet(noisy, t, **kwargs).sample
    F.mse_loss(pred.float(), target.float()).backward()
    started = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started
