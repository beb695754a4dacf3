"""Noise, timesteps and loss as kohya-ss/sd-scripts computes them, reproducible from one generator.

kohya's names and semantics (train_util.get_noise_noisy_latents_and_timesteps,
custom_train_functions.apply_noise_offset / pyramid_noise_like / apply_snr_weight,
train_util.conditional_loss / get_huber_threshold_if_needed):

* noise_offset: add ``noise_offset * randn(B, C, 1, 1)`` to the noise, i.e. a random per-image,
  per-channel shift of the mean. Lets the model learn very dark / bright images (seed 000: "ayudan
  a corregir situaciones en las que la imagen generada es demasiado brillante o demasiado oscura").
  noise_offset_random_strength: the strength is drawn uniformly in [0, noise_offset) per batch.
* multires_noise_iterations / multires_noise_discount (pyramid noise): add noise drawn at
  successively lower resolutions (each level 2-4x smaller, random), upsampled bilinearly and
  weighted ``discount**i``, then rescale the whole tensor to unit std. Seed 000 recommends 6-10
  iterations and a discount of 0.3-0.8; kohya's default discount is 0.3.
* min_timestep / max_timestep: timesteps uniform in [min, max).
* ip_noise_gamma (+ _random_strength): extra noise on the UNet's input only (input_perturbation).
* min_snr_gamma: per-sample loss weight min(SNR, gamma) / SNR (epsilon prediction) or
  min(SNR, gamma) / (SNR + 1) (v prediction).
* loss_type l2 | l1 | huber | smooth_l1 with huber_c: huber = 2c(sqrt((a-b)^2 + c^2) - c),
  smooth_l1 = 2(sqrt((a-b)^2 + c^2) - c); huber_schedule constant | exponential | snr.

Unlike kohya, which draws from the global RNGs (and Python's ``random`` for the pyramid scales),
everything here draws from the ``torch.Generator`` passed in, so a run is repeatable from its seed.
Random numbers are drawn on the generator's device (CPU) and moved to the latents' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import TrainerError

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def _rand(generator: torch.Generator) -> float:
    device = generator.device if generator is not None else torch.device("cpu")
    return float(torch.rand(1, generator=generator, device=device).item())


def make_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float | None = 0.0,
               noise_offset_random_strength: bool = False, multires_noise_iterations: int | None = 0,
               multires_noise_discount: float = 0.3, adaptive_noise_scale: float | None = None) -> torch.Tensor:
    """Gaussian noise shaped like ``latents`` [B, C, H, W], with kohya's optional offset noise and
    multi-resolution (pyramid) noise, in that order.

    adaptive_noise_scale (kohya, optional): adds ``adaptive_noise_scale * |mean of each latent
    channel|`` to the offset (clamped at 0)."""
    if latents.ndim != 4:
        raise TrainerError(f"make_noise expects latents [B, C, H, W], got shape {tuple(latents.shape)}.")
    noise = _randn(latents.shape, generator, latents)
    if noise_offset:
        if noise_offset < 0:
            raise TrainerError(f"noise_offset must be 0 or more (got {noise_offset}); around 0.1 is usual.")
        strength = noise_offset * _rand(generator) if noise_offset_random_strength else noise_offset
        b, c = latents.shape[:2]
        if adaptive_noise_scale is not None:
            latent_mean = latents.float().mean(dim=(2, 3), keepdim=True).abs()
            strength = torch.clamp(strength + adaptive_noise_scale * latent_mean, min=0.0).to(noise.dtype)
        noise = noise + strength * _randn((b, c, 1, 1), generator, latents)
    if multires_noise_iterations:
        if multires_noise_iterations < 0:
            raise TrainerError(f"multires_noise_iterations must be 0 or more (got {multires_noise_iterations}); 6-10 is usual.")
        if not 0 < multires_noise_discount <= 1:
            raise TrainerError(f"multires_noise_discount must be in (0, 1] (got {multires_noise_discount}); 0.3-0.8 is usual.")
        noise = pyramid_noise(noise, generator, int(multires_noise_iterations), float(multires_noise_discount))
    return noise


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int = 6,
                  discount: float = 0.4) -> torch.Tensor:
    """kohya's pyramid_noise_like: level i adds noise at 1/r**i of the size (r random in [2, 4)),
    upsampled bilinearly and weighted discount**i; stops at 1x1; rescaled to unit std."""
    b, c, h, w = noise.shape
    out = noise.float().clone()
    for i in range(iterations):
        r = _rand(generator) * 2 + 2
        hn, wn = max(1, int(h / (r ** i))), max(1, int(w / (r ** i)))
        low = _randn((b, c, hn, wn), generator, out)
        out += F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) * discount ** i
        if hn == 1 or wn == 1:
            break
    return (out / out.std()).to(noise.dtype)


def input_perturbation(noise: torch.Tensor, generator: torch.Generator, gamma: float | None,
                       random_strength: bool = False) -> torch.Tensor | None:
    """kohya's ip_noise_gamma (input perturbation, arxiv.org/abs/2301.11706): the noise that makes
    the UNet's input is ``noise + strength * randn``, while the target stays ``noise``.
    strength = gamma, or uniform in [0, gamma) per batch with random_strength. None when off (and
    then nothing is drawn, so runs without it keep their random sequence)."""
    if not gamma:
        return None
    strength = gamma * _rand(generator) if random_strength else gamma
    return noise + strength * _randn(noise.shape, generator, noise)


def sample_timesteps(batch: int, generator: torch.Generator, num_train_timesteps: int,
                     min_timestep: int | None = None, max_timestep: int | None = None,
                     device=None) -> torch.Tensor:
    """``batch`` integer timesteps uniform in [min_timestep, max_timestep) (kohya's defaults: 0 and
    num_train_timesteps). min == max gives that one timestep for every sample."""
    lo = 0 if min_timestep is None else int(min_timestep)
    hi = num_train_timesteps if max_timestep is None else int(max_timestep)
    if lo < 0 or hi > num_train_timesteps:
        raise TrainerError(f"min_timestep/max_timestep ({lo}, {hi}) must lie within 0..{num_train_timesteps} "
                           "(this model's number of training timesteps).")
    if lo > hi:
        raise TrainerError(f"min_timestep ({lo}) is above max_timestep ({hi}): swap them.")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if lo == hi:
        if lo >= num_train_timesteps:
            raise TrainerError(f"min_timestep = max_timestep = {lo} is past the last timestep "
                               f"({num_train_timesteps - 1}): lower them.")
        t = torch.full((batch,), lo, dtype=torch.long)
    else:
        t = torch.randint(lo, hi, (batch,), generator=generator, device=gen_device, dtype=torch.long)
    return t.to(device if device is not None else t.device)


def loss_weights_min_snr(scheduler, timesteps: torch.Tensor, gamma: float | None,
                         v_prediction: bool = False) -> torch.Tensor:
    """Per-sample min-SNR-gamma weights [B] (Hang et al. 2023, kohya's apply_snr_weight), from
    ``diffusers.training_utils.compute_snr``: min(SNR, gamma)/SNR for epsilon prediction,
    min(SNR, gamma)/(SNR + 1) for v prediction. gamma None or 0 = off (all ones); 5 is usual.
    SNR is floored at 1e-8 so a zero-terminal-SNR schedule gives weight 1 instead of NaN."""
    if not gamma:
        return torch.ones(timesteps.shape[0], dtype=torch.float32, device=timesteps.device)
    if gamma < 0:
        raise TrainerError(f"min_snr_gamma must be positive (got {gamma}); 5 is the usual value.")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps).float().clamp(min=1e-8)
    clipped = torch.clamp(snr, max=float(gamma))
    return clipped / (snr + 1) if v_prediction else clipped / snr


def huber_threshold(scheduler, timesteps: torch.Tensor, huber_c: float = 0.1, huber_schedule: str = "snr",
                    huber_scale: float = 1.0) -> torch.Tensor:
    """kohya's per-sample huber_c [B] for huber / smooth_l1 (get_huber_threshold_if_needed).
    constant: huber_c * huber_scale; exponential: exp(-alpha t) * huber_scale with
    alpha = -ln(huber_c) / num_train_timesteps; snr (kohya's default): (1 - c)/(1 + sigma_t)^2 + c."""
    if huber_schedule not in HUBER_SCHEDULES:
        raise TrainerError(f"huber_schedule '{huber_schedule}' is not one of {', '.join(HUBER_SCHEDULES)}.")
    if not 0 < huber_c <= 1 and huber_schedule != "constant":
        raise TrainerError(f"huber_c must be in (0, 1] for the {huber_schedule} schedule (got {huber_c}); 0.1 is kohya's default.")
    t = timesteps.long().cpu()
    if huber_schedule == "constant":
        out = torch.full(t.shape, float(huber_c) * huber_scale)
    elif huber_schedule == "exponential":
        alpha = -math.log(huber_c) / scheduler.config.num_train_timesteps
        out = torch.exp(-alpha * t.float()) * huber_scale
    else:
        ac = scheduler.alphas_cumprod.cpu().float()[t]
        sigmas = ((1.0 - ac) / ac) ** 0.5
        out = (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    return out.to(timesteps.device)


def diffusion_loss_fn(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                      huber_c: float | torch.Tensor = 0.1, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss [B] (mean over every dim but the batch), computed in fp32, so per-sample
    weights (min-SNR) can be applied before the final ``.mean()``.

    l2: (a-b)^2; l1: |a-b|; huber: 2c(sqrt((a-b)^2 + c^2) - c), about (a-b)^2 for |a-b| << c and
    2c|a-b| for |a-b| >> c; smooth_l1: 2(sqrt((a-b)^2 + c^2) - c). ``huber_c`` a float or [B].
    ``masks`` [B, 1, H, W]: kohya's masked loss (masked_loss.py) before the mean."""
    kind = (loss_type or "l2").lower()
    if kind not in LOSS_TYPES:
        raise TrainerError(f"loss_type '{loss_type}' is not one of {', '.join(LOSS_TYPES)}.")
    if pred.shape != target.shape:
        raise TrainerError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    a, b = pred.float(), target.float()
    if kind == "l2":
        elem = (a - b) ** 2
    elif kind == "l1":
        elem = (a - b).abs()
    else:
        c = torch.as_tensor(huber_c, dtype=torch.float32, device=a.device)
        if c.ndim:
            c = c.view(-1, *([1] * (a.ndim - 1)))
        if bool((c <= 0).any()):
            raise TrainerError(f"huber_c must be positive (got {huber_c}); 0.1 is kohya's default.")
        sq = (a - b) ** 2
        root = sq / (torch.sqrt(sq + c ** 2) + c)  # = sqrt(sq + c^2) - c, without fp32 cancellation
        elem = 2 * c * root if kind == "huber" else 2 * root
    if masks is not None:
        from .masked_loss import apply_masked_loss

        elem = apply_masked_loss(elem, masks)
    return elem.reshape(elem.shape[0], -1).mean(dim=1)
