"""trainer.train.noise: each option's effect on the noise / timesteps / loss, and reproducibility."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from trainer.errors import TrainerError
from trainer.train.noise import (diffusion_loss_fn, huber_threshold, loss_weights_min_snr, make_noise,
                                 sample_timesteps)

LATENTS = torch.zeros(256, 4, 16, 16)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _channel_mean_var(noise):
    return noise.mean(dim=(2, 3)).var().item()


def test_plain_noise_is_standard_normal_and_reproducible():
    a, b = make_noise(LATENTS, _gen(1)), make_noise(LATENTS, _gen(1))
    assert torch.equal(a, b) and a.shape == LATENTS.shape
    assert abs(a.mean().item()) < 0.01 and abs(a.std().item() - 1) < 0.01
    assert not torch.equal(a, make_noise(LATENTS, _gen(2)))


def test_offset_noise_raises_channel_mean_variance_by_offset_squared():
    base = _channel_mean_var(make_noise(LATENTS, _gen(3)))  # ~1/(16*16)
    off = _channel_mean_var(make_noise(LATENTS, _gen(3), noise_offset=0.1))
    assert base == pytest.approx(1 / 256, rel=0.15)
    assert off - base == pytest.approx(0.1 ** 2, rel=0.2)
    # random strength: offset * U(0,1) per batch -> on average offset^2 / 3
    extra = [_channel_mean_var(make_noise(LATENTS, _gen(s), noise_offset=0.1, noise_offset_random_strength=True))
             - 1 / 256 for s in range(40)]
    assert sum(extra) / len(extra) == pytest.approx(0.01 / 3, rel=0.35)
    assert max(extra) < 0.01 * 1.3


def _low_freq_share(noise, pool=8):
    """Share of the variance that survives an 8x8 average pool (the low frequencies)."""
    return F.avg_pool2d(noise, pool).var().item() / noise.var().item()


def test_multires_noise_moves_energy_to_low_frequencies():
    lat = torch.zeros(16, 4, 64, 64)
    plain = make_noise(lat, _gen(4))
    multi = make_noise(lat, _gen(4), multires_noise_iterations=8, multires_noise_discount=0.5)
    weak = make_noise(lat, _gen(4), multires_noise_iterations=8, multires_noise_discount=0.1)
    assert multi.std().item() == pytest.approx(1.0, abs=1e-4)  # renormalised
    assert _low_freq_share(plain) == pytest.approx(1 / 64, rel=0.2)
    assert _low_freq_share(multi) > 2.5 * _low_freq_share(plain)
    assert _low_freq_share(plain) < _low_freq_share(weak) < _low_freq_share(multi)  # discount controls it
    assert torch.equal(multi, make_noise(lat, _gen(4), multires_noise_iterations=8, multires_noise_discount=0.5))


def test_noise_option_errors():
    with pytest.raises(TrainerError, match="0.3-0.8"):
        make_noise(LATENTS, _gen(), multires_noise_iterations=6, multires_noise_discount=0)
    with pytest.raises(TrainerError, match="noise_offset"):
        make_noise(LATENTS, _gen(), noise_offset=-0.1)


def test_timesteps_stay_in_range_and_cover_it():
    t = sample_timesteps(5000, _gen(5), 1000, min_timestep=200, max_timestep=400)
    assert t.dtype == torch.long and t.min().item() == 200 and t.max().item() == 399
    full = sample_timesteps(5000, _gen(5), 1100)  # Kolors trains on 1100 timesteps
    assert full.min().item() == 0 and full.max().item() == 1099
    assert torch.equal(sample_timesteps(8, _gen(6), 1000), sample_timesteps(8, _gen(6), 1000))
    assert set(sample_timesteps(4, _gen(), 1000, 500, 500).tolist()) == {500}
    with pytest.raises(TrainerError, match="swap"):
        sample_timesteps(4, _gen(), 1000, 600, 500)
    with pytest.raises(TrainerError, match="0..1000"):
        sample_timesteps(4, _gen(), 1000, 0, 1001)


def _scheduler(pred="epsilon"):
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type=pred)


def test_min_snr_weights():
    sched = _scheduler()
    t = torch.tensor([0, 10, 100, 300, 500, 999])
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    eps = loss_weights_min_snr(sched, t, 5.0)
    v = loss_weights_min_snr(sched, t, 5.0, v_prediction=True)
    assert torch.allclose(eps, torch.clamp(snr, max=5) / snr, rtol=1e-4)
    assert torch.allclose(v, torch.clamp(snr, max=5) / (snr + 1), rtol=1e-4)
    # effect: low-noise steps (high SNR) are down-weighted, high-noise steps keep weight 1 (eps)
    assert eps[0] < 0.01 and eps[-1] == pytest.approx(1.0)
    assert torch.equal(loss_weights_min_snr(sched, t, None), torch.ones(6))


def test_huber_is_quadratic_for_small_and_linear_for_large_errors():
    c = 0.1
    zero = torch.zeros(1, 4, 8, 8)
    small = torch.full_like(zero, 0.001)
    assert diffusion_loss_fn(small, zero, "huber", c).item() == pytest.approx(
        diffusion_loss_fn(small, zero, "l2").item(), rel=1e-3)
    for a in (10.0, 100.0):
        big = torch.full_like(zero, a)
        assert diffusion_loss_fn(big, zero, "huber", c).item() == pytest.approx(2 * c * a - 2 * c * c, rel=1e-3)
    # linear: doubling a large error doubles the loss (l2 would quadruple it)
    h1 = diffusion_loss_fn(torch.full_like(zero, 50.0), zero, "huber", c).item()
    h2 = diffusion_loss_fn(torch.full_like(zero, 100.0), zero, "huber", c).item()
    assert h2 / h1 == pytest.approx(2.0, rel=0.01)
    assert diffusion_loss_fn(torch.full_like(zero, 100.0), zero, "smooth_l1", c).item() == pytest.approx(200 - 0.2, rel=1e-3)
    assert diffusion_loss_fn(torch.full_like(zero, -3.0), zero, "l1").item() == pytest.approx(3.0)


def test_loss_is_per_sample_so_snr_weights_apply():
    sched = _scheduler()
    pred = torch.stack([torch.full((4, 8, 8), 1.0), torch.full((4, 8, 8), 2.0)])
    loss = diffusion_loss_fn(pred, torch.zeros_like(pred), "l2")
    assert loss.shape == (2,) and loss.tolist() == [1.0, 4.0]
    t = torch.tensor([10, 900])
    weighted = (loss * loss_weights_min_snr(sched, t, 5.0)).mean()
    assert weighted < loss.mean()
    # per-sample huber_c (kohya's scheduled huber): a larger c at low t -> closer to l2
    cs = huber_threshold(sched, t, 0.1, "snr")
    assert cs.shape == (2,) and cs[0] > cs[1] >= 0.1
    assert diffusion_loss_fn(pred, torch.zeros_like(pred), "huber", cs).shape == (2,)
    assert huber_threshold(sched, t, 0.1, "constant").tolist() == pytest.approx([0.1, 0.1])
    with pytest.raises(TrainerError, match="l2, l1, huber, smooth_l1"):
        diffusion_loss_fn(pred, pred, "mae")
