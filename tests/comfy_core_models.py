"""What ComfyUI a125cd84's CheckpointLoaderSimple (comfy.sd.load_checkpoint_guess_config) hands a
node for an SD1.5 / SDXL single file, rebuilt in our own small code on a CPU:

- MODEL: a ModelPatcher over a BaseModel whose state dict is ``diffusion_model.<LDM name>`` for every
  UNet tensor of the file (float32, as ComfyUI picks on a CPU) plus ComfyUI's own buffers
  (``model_sampling.sigmas`` / ``log_sigmas``; SDXL also ``noise_augmentor.*``), with
  ``model_config`` (class SD15 / SDXL, ``unet_config`` as comfy/model_detection.py derives it),
  ``latent_format``, ``model_type``. ``diffusion_model`` is a module tree at the LDM paths: GroupNorm
  where ComfyUI's openaimodel has one (with the checkpoint's group count), Linear / Conv2d /
  LayerNorm leaves, CrossAttention containers carrying ``heads`` / ``dim_head``.
- VAE: ``first_stage_model`` with the LDM VAE names (float32), GroupNorm leaves, ``decode`` /
  ``encode`` as ComfyUI's VAE does them; it runs through diffusers' AutoencoderKL built from the
  current (patched) weights with diffusers' own converter.
- CLIP: comfy_core_clip.py. What is read from the file (unet_config, family, latent format):
  comfy_core_detect.py.

Every tensor is made under torch.inference_mode(), as in ComfyUI (nodes run inside it), so they are
inference tensors. ComfyUI itself recognises only the full-size SD1.5 / SDXL shapes (and fixes 32
norm groups and 64-wide SDXL heads); for the tiny test checkpoints the stand-in takes the family
from the UNet's shape and the group counts / head widths from the diffusers configs embedded in the
file's header (trainer.tiny.build.write_tiny_checkpoint)."""

from __future__ import annotations

import math

import torch

from comfy_core_detect import (CPU, SDXL, UNET_PREFIX, VAE_PREFIX, ModelType, detect_unet_config, embedded_configs,
                               family_config, read_checkpoint, single_thread)
from comfy_core_patcher import ModelPatcher
from comfy_standin import model_management

# --- module trees at the checkpoint's names ---

_CLASSES: dict[str, type] = {}


def _container(name: str) -> type:
    """A plain nn.Module subclass named like the ComfyUI module that sits there."""
    return _CLASSES.setdefault(name, type(name, (torch.nn.Module,), {}))


# the order ComfyUI's modules register their children in (state_dict() lists keys in it)
UNET_ORDER = ["time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out",
              "in_layers", "emb_layers", "out_layers", "skip_connection", "norm", "proj_in", "transformer_blocks",
              "proj_out", "attn1", "ff", "attn2", "norm2", "norm1", "norm3", "to_q", "to_k", "to_v", "to_out"]


def registration_order(key: str, names=()):
    """Sort key: known names in ``names``' order, numbers by value, weight before bias."""
    rank = {n: i for i, n in enumerate(list(names) + ["weight", "bias"])}
    return [(0, int(p), "") if p.isdigit() else (1, rank.get(p, len(rank)), p) for p in key.split(".")]


def build_tree(root: torch.nn.Module, values: dict, leaf, kind, order=()) -> torch.nn.Module:
    """Modules at the paths of ``values`` (name -> tensor): ``leaf(path, {param: tensor})`` makes the
    module holding a path's parameters, ``kind(path, child names)`` names a container; then the
    values are copied in (load_state_dict, strict). Children are added in ``order``."""
    groups: dict[str, dict] = {}
    for key in sorted(values, key=lambda k: registration_order(k, order)):
        value = values[key]
        path, _, name = key.rpartition(".")
        groups.setdefault(path, {})[name] = value
    children: dict[str, set] = {}
    for path in groups:
        parts = path.split(".")
        for i in range(len(parts)):
            children.setdefault(".".join(parts[:i]), set()).add(parts[i])
    for path, params in groups.items():
        parent, parts = root, path.split(".")
        for i, part in enumerate(parts[:-1]):
            if not hasattr(parent, part):
                sub = ".".join(parts[:i + 1])
                parent.add_module(part, _container(kind(sub, children.get(sub, set())))())
            parent = getattr(parent, part)
        parent.add_module(parts[-1], leaf(path, params))
    root.load_state_dict(values, strict=True)
    return root


def _conv(w, bias, stride=1, padding=None):
    k = tuple(w.shape[2:])
    return torch.nn.Conv2d(w.shape[1], w.shape[0], k, stride=stride, padding=k[0] // 2 if padding is None else padding,
                           bias=bias, dtype=w.dtype)


def _unet_kind(path: str, children: set) -> str:
    last = path.rsplit(".", 1)[-1]
    if last in ("input_blocks", "output_blocks", "transformer_blocks"):
        return "ModuleList"
    for child, name in (("in_layers", "ResBlock"), ("proj_in", "SpatialTransformer"),
                        ("attn1", "BasicTransformerBlock"), ("to_q", "CrossAttention"), ("op", "Downsample")):
        if child in children:
            return name
    if path.count(".") == 1 and path.split(".")[0] in ("input_blocks", "output_blocks") or path == "middle_block":
        return "TimestepEmbedSequential"
    if children == {"conv"}:
        return "Upsample"
    if last == "ff":
        return "FeedForward"
    return "Sequential"


def unet_module(values: dict, unet_config: dict, groups: int) -> torch.nn.Module:
    """ComfyUI's openaimodel UNetModel tree for LDM-named ``values``."""
    def leaf(path, params):
        w, bias = params["weight"], "bias" in params
        if w.ndim == 4:
            return _conv(w, bias, stride=2 if path.endswith(".op") else 1)
        if w.ndim == 2:
            return torch.nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype)
        resnet_norm = path.endswith(("in_layers.0", "out_layers.0")) or path == "out.0"
        if resnet_norm or f"{path[:-len('norm')]}proj_in.weight" in values and path.endswith(".norm"):
            return torch.nn.GroupNorm(groups, w.shape[0], eps=1e-5 if resnet_norm else 1e-6, dtype=w.dtype)
        return torch.nn.LayerNorm(w.shape[0], dtype=w.dtype)

    root = _container("UNetModel")()
    build_tree(root, values, leaf, _unet_kind, UNET_ORDER)
    root.dtype = unet_config.get("dtype", torch.float32)
    for name, module in root.named_modules():
        if type(module).__name__ == "CrossAttention":  # ComfyUI: heads fixed, or channels // head width
            inner = module.to_q.weight.shape[0]
            heads = unet_config["num_heads"] if unet_config["num_head_channels"] == -1 else \
                inner // unet_config["num_head_channels"]
            module.heads, module.dim_head = heads, inner // heads
    return root


class ModelSampling(torch.nn.Module):
    """ComfyUI's discrete EPS sampling (linear betas 0.00085..0.012, 1000 steps) and its formulas."""

    def __init__(self, linear_start=0.00085, linear_end=0.012, timesteps=1000):
        super().__init__()
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())
        self.sigma_data = 1.0

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def calculate_input(self, sigma, noise):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        scale = torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else sigma
        return noise * scale + latent_image


class NoiseAugmentation(torch.nn.Module):
    """The buffers of SDXL's CLIPEmbeddingNoiseAugmentation (squaredcos_cap_v2, 1000 steps): ComfyUI's
    SDXL BaseModel carries them in its state dict."""

    def __init__(self, timesteps=1000):
        super().__init__()
        import numpy as np

        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.array([min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
                          for i in range(timesteps)])
        ac = np.cumprod(1.0 - betas)
        for name, value in (("betas", betas), ("alphas_cumprod", ac), ("alphas_cumprod_prev", np.append(1.0, ac[:-1])),
                            ("sqrt_alphas_cumprod", np.sqrt(ac)), ("sqrt_one_minus_alphas_cumprod", np.sqrt(1 - ac)),
                            ("log_one_minus_alphas_cumprod", np.log(1 - ac)),
                            ("sqrt_recip_alphas_cumprod", np.sqrt(1 / ac)),
                            ("sqrt_recipm1_alphas_cumprod", np.sqrt(1 / ac - 1))):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))


class BaseModel(torch.nn.Module):
    """comfy.model_base.BaseModel: MODEL.model."""

    def __init__(self, model_config, diffusion_model, diffusers_config=None, model_type=ModelType.EPS):
        super().__init__()
        self.latent_format = model_config.latent_format
        self.model_config = model_config
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = None
        self.current_patcher = None
        self.diffusion_model = diffusion_model
        self.model_type = model_type
        self.model_sampling = ModelSampling()
        self.adm_channels = model_config.unet_config.get("adm_in_channels") or 0
        self.concat_keys = ()
        self.memory_usage_factor = model_config.memory_usage_factor
        self.diffusers_config = diffusers_config  # stand-in only: how to run the weights with diffusers

    def get_dtype(self):
        return self.diffusion_model.dtype

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)


class SDXLModel(BaseModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embedder = _container("Timestep")()
        self.noise_augmentor = NoiseAugmentation()


SDXLModel.__name__ = SDXLModel.__qualname__ = "SDXL"  # comfy.model_base.SDXL


def load_model(sd: dict, configs: dict) -> ModelPatcher:
    unet_config = detect_unet_config(sd, UNET_PREFIX)
    model_config = family_config(unet_config, configs.get("unet"))
    model_config.set_inference_dtype(torch.float32, None)  # what ComfyUI picks on a CPU
    groups = (configs.get("unet") or {}).get("norm_num_groups", 32)
    values = {k[len(UNET_PREFIX):]: v.to(torch.float32) for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    diffusion_model = unet_module(values, model_config.unet_config, groups)
    model_class = SDXLModel if isinstance(model_config, SDXL) else BaseModel
    model = model_class(model_config, diffusion_model, diffusers_config=configs.get("unet"))
    return ModelPatcher(model, load_device=model_management.get_torch_device(), offload_device=CPU)


# --- VAE ---

def _vae_kind(path: str, children: set) -> str:
    for child, name in (("conv1", "ResnetBlock"), ("q", "AttnBlock"), ("down", "Encoder"), ("up", "Decoder")):
        if child in children:
            return name
    return {"downsample": "Downsample", "upsample": "Upsample"}.get(path.rsplit(".", 1)[-1], "Module")


class VAE:
    """comfy.sd.VAE for an SD / SDXL AutoencoderKL."""

    def __init__(self, sd: dict, diffusers_config: dict | None):
        groups = (diffusers_config or {}).get("norm_num_groups", 32)
        values = {k: v.to(torch.float32) for k, v in sd.items()}

        def leaf(path, params):
            w, bias = params["weight"], "bias" in params
            if w.ndim == 4:
                return _conv(w, bias, stride=2, padding=0) if path.endswith("downsample.conv") else _conv(w, bias)
            return torch.nn.GroupNorm(groups, w.shape[0], eps=1e-6, dtype=w.dtype)

        order = ["encoder", "decoder", "quant_conv", "post_quant_conv", "conv_in", "down", "mid", "up", "norm_out",
                 "conv_out", "block", "attn", "downsample", "upsample", "block_1", "attn_1", "block_2", "norm1",
                 "conv1", "norm2", "conv2", "nin_shortcut", "norm", "q", "k", "v", "proj_out"]
        self.first_stage_model = build_tree(_container("AutoencoderKL")(), values, leaf, _vae_kind, order).eval()
        self.diffusers_config = diffusers_config
        self.latent_channels = sd["decoder.conv_in.weight"].shape[1]
        levels = len((diffusers_config or {}).get("block_out_channels", [0, 0, 0, 0]))
        self.downscale_ratio = self.upscale_ratio = 2 ** (levels - 1)
        self.latent_dim = 2
        self.output_channels = 3
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.crop_input = True
        self.device = self.output_device = CPU
        self.vae_dtype = torch.float32
        self.patcher = ModelPatcher(self.first_stage_model, load_device=CPU, offload_device=CPU)

    def throw_exception_if_invalid(self):
        if self.first_stage_model is None:
            raise RuntimeError("ERROR: VAE is invalid: None")

    def spacial_compression_decode(self):
        return self.upscale_ratio

    def spacial_compression_encode(self):
        return self.downscale_ratio

    def get_sd(self):
        return self.first_stage_model.state_dict()

    def _diffusers(self):
        """diffusers' AutoencoderKL holding copies of the current (patched) weights."""
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        if self.diffusers_config is None:
            raise NotImplementedError("the stand-in runs VAEs of checkpoints with embedded diffusers configs only")
        config = {k: v for k, v in self.diffusers_config.items() if not k.startswith("_")}
        state = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in self.first_stage_model.state_dict().items()},
                                           config)
        vae = AutoencoderKL(**config).eval()
        vae.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
        return vae

    def decode(self, samples_in, vae_options={}):
        self.throw_exception_if_invalid()
        model_management.load_models_gpu([self.patcher])
        with single_thread():
            out = self._diffusers().decode(samples_in.to(self.vae_dtype)).sample
        return self.process_output(out.float()).movedim(1, -1)

    def encode(self, pixel_samples):
        self.throw_exception_if_invalid()
        for d in (1, 2):  # crop to the downscale ratio, centred, as ComfyUI does
            size = pixel_samples.shape[d]
            keep = size // self.downscale_ratio * self.downscale_ratio
            if keep != size:
                pixel_samples = pixel_samples.narrow(d, (size % self.downscale_ratio) // 2, keep)
        pixels = self.process_input(pixel_samples.movedim(-1, 1)).to(self.vae_dtype)
        model_management.load_models_gpu([self.patcher])
        with single_thread():
            return self._diffusers().encode(pixels).latent_dist.mode().float()


def load_checkpoint_guess_config(path, tokenizer_dir):
    """(MODEL, CLIP, VAE, None) for an SD1.5 / SDXL single file, made inside inference mode."""
    from comfy_core_clip import load_clip

    sd, metadata = read_checkpoint(path)
    configs = embedded_configs(metadata)
    with torch.inference_mode():
        model = load_model(sd, configs)
        vae = VAE({k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}, configs.get("vae"))
        clip = load_clip(sd, configs, model.model.model_config, tokenizer_dir)
    return model, clip, vae, None
