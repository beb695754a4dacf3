"""ComfyUI a125cd84's KSampler path (nodes.common_ksampler -> comfy.sample.sample -> CFGGuider with a
k-diffusion sampler) for the stand-in MODEL, in our own code from ComfyUI's formulas: noise from
the seed on the CPU (comfy.sample.prepare_noise), the "normal" / "karras" sigma schedules, denoise
< 1 taking the schedule's tail, latents scaled by the family's factor, noise scaled for the first
sigma, EPS denoising (input / sqrt(sigma^2+1), timestep = nearest log-sigma), cfg on the denoised
predictions, the euler / euler_ancestral steps, SDXL's pooled + size/crop/target vector. The UNet
runs as diffusers' UNet2DConditionModel built from the MODEL's current (patched) weights with
diffusers' own converter, after model_management.load_models_gpu patched them, as ComfyUI does."""

from __future__ import annotations

import math

import torch

from comfy_core_detect import UNET_PREFIX, single_thread
from comfy_standin import ProgressBar, model_management

SAMPLERS = ["euler", "euler_ancestral"]
SCHEDULERS = ["normal", "karras"]
# ComfyUI's lists, for the KSampler widget (comfy.samplers.KSampler.SAMPLERS / SCHEDULERS at a125cd84)
SAMPLER_NAMES = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
                 "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                 "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
                 "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
                 "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
                 "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                 "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
                 "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


def prepare_noise(latent_image, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=latent_image.dtype, generator=generator, device="cpu")


def calculate_sigmas(ms, scheduler: str, steps: int) -> torch.Tensor:
    if scheduler == "normal":
        start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
        append_zero = True
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=1e-5):
            steps, append_zero = steps + 1, False
        sigmas = [float(ms.sigma(t)) for t in torch.linspace(start, end, steps)]
        return torch.FloatTensor(sigmas + ([0.0] if append_zero else []))
    if scheduler == "karras":
        rho = 7.0
        ramp = torch.linspace(0, 1, steps)
        lo, hi = float(ms.sigma_min) ** (1 / rho), float(ms.sigma_max) ** (1 / rho)
        return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])
    raise NotImplementedError(f"the stand-in KSampler has schedulers {SCHEDULERS}, not '{scheduler}'")


def sigmas_for(ms, scheduler, steps, denoise):
    if denoise is None or denoise > 0.9999:
        return calculate_sigmas(ms, scheduler, steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return calculate_sigmas(ms, scheduler, int(steps / denoise))[-(steps + 1):]


def diffusers_unet(base_model):
    """diffusers' UNet2DConditionModel holding copies of ``base_model``'s current weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = base_model.diffusers_config
    if config is None:
        raise NotImplementedError("the stand-in runs UNets of checkpoints with embedded diffusers configs only")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    ldm = {UNET_PREFIX + k: v for k, v in base_model.diffusion_model.state_dict().items()}
    state = convert_ldm_unet_checkpoint(ldm, config)
    unet = UNet2DConditionModel(**config).eval()
    unet.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    return unet


class Denoiser:
    """x, sigma -> cfg-combined denoised latent, for one KSampler run."""

    def __init__(self, base_model, positive, negative, cfg, latent_shape):
        self.model, self.ms, self.cfg = base_model, base_model.model_sampling, cfg
        self.unet = diffusers_unet(base_model)
        self.conds = [self._cond(c, latent_shape) for c in (positive, negative)]

    def _cond(self, conditioning, shape):
        if len(conditioning) != 1:
            raise NotImplementedError("the stand-in KSampler takes one conditioning entry per input")
        context, extra = conditioning[0]
        batch = shape[0]
        out = {"encoder_hidden_states": context.float().repeat(batch, 1, 1)}
        if self.model.adm_channels:  # SDXL: pooled text + (height, width, crop_h, crop_w, target_h, target_w)
            height, width = extra.get("height", shape[2] * 8), extra.get("width", shape[3] * 8)
            ids = [height, width, extra.get("crop_h", 0), extra.get("crop_w", 0),
                   extra.get("target_height", height), extra.get("target_width", width)]
            out["added_cond_kwargs"] = {"text_embeds": extra["pooled_output"].float().repeat(batch, 1),
                                        "time_ids": torch.tensor([ids], dtype=torch.float32).repeat(batch, 1)}
        return out

    def __call__(self, x, sigma):
        xc = self.ms.calculate_input(sigma, x)
        t = self.ms.timestep(sigma).float()
        cond, uncond = (self.ms.calculate_denoised(sigma, self.unet(xc, t, **c).sample.float(), x) for c in self.conds)
        return uncond + (cond - uncond) * self.cfg


def sample_euler(denoise, x, sigmas, seed, bar):
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * x.new_ones([x.shape[0]]))
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        bar.update_absolute(i + 1)
    return x


def sample_euler_ancestral(denoise, x, sigmas, seed, bar):
    generator = torch.Generator(device=x.device).manual_seed(seed)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * x.new_ones([x.shape[0]]))
        s_from, s_to = sigmas[i], sigmas[i + 1]
        sigma_up = min(s_to, (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5)
        sigma_down = (s_to ** 2 - sigma_up ** 2) ** 0.5
        if sigma_down == 0:
            x = denoised
        else:
            x = x + (x - denoised) / s_from * (sigma_down - s_from)
            x = x + torch.randn(x.size(), dtype=x.dtype, generator=generator) * sigma_up
        bar.update_absolute(i + 1)
    return x


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0):
    if sampler_name not in SAMPLERS:
        raise NotImplementedError(f"the stand-in KSampler has samplers {SAMPLERS}, not '{sampler_name}'")
    latent_image = latent["samples"]
    noise = prepare_noise(latent_image, seed)
    base = model.model
    sigmas = sigmas_for(base.model_sampling, scheduler, steps, denoise)
    model_management.load_models_gpu([model])  # patches the MODEL's weights; they stay patched after
    bar = ProgressBar(steps)
    if len(sigmas) <= 1:
        samples = latent_image
    else:
        ms = base.model_sampling
        latent_in = base.process_latent_in(latent_image)
        first, top = float(sigmas[0]), float(ms.sigma_max)
        max_denoise = math.isclose(top, first, rel_tol=1e-5) or first > top
        x = ms.noise_scaling(sigmas[0], noise, latent_in, max_denoise)
        run = sample_euler if sampler_name == "euler" else sample_euler_ancestral
        with single_thread():
            samples = base.process_latent_out(run(Denoiser(base, positive, negative, cfg, latent_image.shape),
                                                  x, sigmas, seed, bar).float())
    out = latent.copy()
    out["samples"] = samples
    return (out,)
