"""Text-to-image for every family, with a choice of sampler and the LoRA strength."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import TrainerError
from .lora.apply import list_adapters, set_lora_strength

# sampler name -> (diffusers scheduler class, extra config); names follow ComfyUI's
SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": False}),
    # kohya's sample_sampler names (train_util.get_my_scheduler), k_ prefix or not
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
SAMPLER_ALIASES = {f"k_{name}": name for name in ("lms", "euler", "euler_a", "dpm_2", "dpm_2_a")}  # kohya's too


def make_scheduler(base_config, sampler: str):
    import diffusers

    sampler = SAMPLER_ALIASES.get(sampler, sampler)
    if sampler not in SAMPLERS:
        raise TrainerError(f"Unknown sampler '{sampler}'. Use one of: {', '.join(SAMPLERS)}.")
    cls_name, extra = SAMPLERS[sampler]
    try:
        return getattr(diffusers, cls_name).from_config({**dict(base_config), **extra})
    except ImportError as err:  # lms needs scipy, which is not a requirement
        raise TrainerError(f"Sampler '{sampler}' needs a package that is not installed ({err}); "
                           "install it (pip install scipy) or choose euler_a.") from None


def generate(model, prompt: str, negative_prompt: str = "", seed: int = 0, steps: int = 20, cfg: float = 7.0,
             width: int | None = None, height: int | None = None, sampler: str = "euler_a",
             lora_strength: float | None = None, output_type: str = "pil", device=None,
             kohya_prompts: dict | None = None):
    """Generate one image (PIL, or latents [1, C, h, w] with ``output_type="latent"``) with the same seed
    giving the same picture. ``lora_strength`` re-weights every loaded LoRA adapter. ``kohya_prompts``
    ({"clip_skip", "max_token_length"}): encode the prompts as kohya's training samples do (long
    prompts, "(word:1.2)" weights; families/clip_chunks.py) instead of the pipeline's 77 tokens."""
    pipe = model.pipe
    if any(getattr(pipe, n) is None for n in model.family.text_parts):
        raise TrainerError("This model's text encoder was released after caching (release_text_encoder): "
                           "load the model again to generate.")
    size = model.family.default_resolution
    width, height = int(width or size), int(height or size)
    if width % 8 or height % 8:
        raise TrainerError(f"Image size {width}x{height}: width and height must be multiples of 8.")
    base = getattr(model, "base_scheduler_config", None) or pipe.scheduler.config
    model.base_scheduler_config = base
    pipe.scheduler = make_scheduler(base, sampler)
    adapters = list_adapters(model)
    if lora_strength is not None and adapters:
        set_lora_strength(model, {name: lora_strength for name in adapters})
    device = device or pipe.unet.device
    generator = torch.Generator("cpu").manual_seed(int(seed))
    with torch.inference_mode(), _vae_takes_latents_in_any_dtype(pipe.vae):
        prompts = {"prompt": prompt, "negative_prompt": negative_prompt or None}
        if kohya_prompts is not None:
            prompts = model.family.sample_embeddings(pipe, prompt, negative_prompt, device, **kohya_prompts) or prompts
        out = pipe(**prompts, num_inference_steps=int(steps),
                   guidance_scale=float(cfg), width=width, height=height, generator=generator,
                   output_type=output_type)
    return out.images if output_type == "latent" else out.images[0]


@contextmanager
def _vae_takes_latents_in_any_dtype(vae):
    """Latents come out of the UNet in its dtype (bf16/fp16 weights) while the VAE stays fp32, and
    diffusers' SD1.5 and Kolors pipelines hand them to the VAE uncast: cast them at its door."""
    dtype = next(vae.parameters()).dtype

    def cast(module, args):
        return (args[0].to(dtype), *args[1:]) if args and torch.is_tensor(args[0]) else args

    doors = [m for m in (getattr(vae, "post_quant_conv", None), vae.decoder) if m is not None]
    handles = [m.register_forward_pre_hook(cast) for m in doors]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
