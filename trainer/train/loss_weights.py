"""kohya's per-sample loss weights, in kohya's order (train_network.py process_batch and
post_process_loss; custom_train_functions.py):

  per-sample loss (mean over C, H, W)
  * prior_loss_weight                     (regularization images)
  * min(SNR, gamma) / SNR                 min_snr_gamma (/ (SNR + 1) for v-prediction)
  * SNR / (SNR + 1)                       scale_v_pred_loss_like_noise_pred (v-prediction only)
  + loss / (SNR / (SNR + 1)) * v          v_pred_like_loss (noise prediction only)
  * 1 / sqrt(SNR)                         debiased_estimation_loss (1 / (SNR + 1) for v-prediction)

SNR is clamped at 1000 for the last three (t = 0 would be near infinite). kohya reads SNR from
``all_snr``, computed *before* zero_terminal_snr fixes the betas, so the weights keep the original
schedule's SNR while the noise follows the fixed one; we do the same (snr_schedule), which also
keeps 1/sqrt(SNR) finite at the last timestep.
"""

from __future__ import annotations

import torch

from ..errors import TrainerError
from .noise import loss_weights_min_snr

SNR_CAP = 1000.0  # kohya: "if timestep is 0, snr_t is inf, so limit it to 1000"


def check_loss_options(config, log=print) -> None:
    """kohya's verify_training_args for these options: two refusals, one warning."""
    if config.scale_v_pred_loss_like_noise_pred and not config.v_parameterization:
        raise TrainerError("scale_v_pred_loss_like_noise_pred works only with v_parameterization: "
                           "set v_parameterization = true or remove it.")
    if config.v_pred_like_loss and config.v_parameterization:
        raise TrainerError("v_pred_like_loss cannot be used with v_parameterization (the loss already is "
                           "v-prediction's): remove one of them.")
    if config.zero_terminal_snr and not config.v_parameterization:
        log("warning: zero_terminal_snr is on but v_parameterization is not: a noise-prediction model "
            "cannot predict the noise at zero SNR, training will be unexpected (as kohya warns)")


def snr_schedule(scheduler):
    """The scheduler whose alphas_cumprod kohya's loss weights read: the same schedule without the
    zero-terminal-SNR fix (built once, kept on the scheduler)."""
    if not scheduler.config.get("rescale_betas_zero_snr", False):
        return scheduler
    original = getattr(scheduler, "_lt_snr_schedule", None)
    if original is None:
        original = type(scheduler).from_config(scheduler.config, rescale_betas_zero_snr=False)
        scheduler._lt_snr_schedule = original
    return original


def weighting_snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """kohya's all_snr[t] [B]: (alpha / sigma)^2 of the schedule snr_schedule() names."""
    from diffusers.training_utils import compute_snr

    return compute_snr(snr_schedule(scheduler), timesteps).float()


def apply_loss_weights(per_sample: torch.Tensor, scheduler, timesteps: torch.Tensor, config,
                       sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``per_sample`` [B] weighted as kohya weights it, in kohya's order (module docstring)."""
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    loss = per_sample
    if sample_weights is not None:  # prior_loss_weight for regularization samples
        loss = loss * sample_weights.to(loss.device, loss.dtype)
    if config.min_snr_gamma:
        loss = loss * loss_weights_min_snr(snr_schedule(scheduler), timesteps, config.min_snr_gamma,
                                           v_prediction).to(loss.device)
    uses_snr = config.scale_v_pred_loss_like_noise_pred or config.v_pred_like_loss or config.debiased_estimation_loss
    if not uses_snr:
        return loss
    snr = torch.clamp(weighting_snr(scheduler, timesteps), max=SNR_CAP).to(loss.device)
    if config.scale_v_pred_loss_like_noise_pred:
        loss = loss * (snr / (snr + 1))
    if config.v_pred_like_loss:
        loss = loss + loss / (snr / (snr + 1)) * float(config.v_pred_like_loss)
    if config.debiased_estimation_loss:
        loss = loss * (1 / (snr + 1) if v_prediction else 1 / torch.sqrt(snr))
    return loss
