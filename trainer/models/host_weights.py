"""Train on weights another program already holds: diffusers modules over a host's tensors.

ComfyUI's CheckpointLoaderSimple has the UNet, CLIP and VAE in memory already. Rather than load the
checkpoint a second time, the trainer builds its diffusers modules on the meta device and points
every parameter at the host's tensor (names converted by diffusers' own LDM converters; the VAE's
1x1-conv attention weights become linear views), so no weight exists twice. The host's tensors are
never written: only the LoRA trains, and the host's modules are not touched at all.

ComfyUI makes its weights under torch.inference_mode(), and inference tensors cannot be saved for
backward; each is therefore re-wrapped as a normal tensor over the same storage (no copy).

A host may later move its weights (ComfyUI offloads models between nodes). ``HostBinding`` can
drop the trainer's references (``unbind``: meta tensors, so no storage is pinned) and point them
at the host's current tensors again (``bind``), through any LoRA wrappers added since.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import TrainerError
from ..families import get_family
from .host_configs import clip_config, unet_config, vae_config
from .loaded import LoadedModel, sampling_scheduler

TEXT_PARTS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}  # the host's name -> the pipeline's


@dataclass
class HostModel:
    """A loaded SD1.5 / SDXL model as its host holds it (ComfyUI's layout).

    ``unet``: LDM names without a prefix (``input_blocks.1.1.…``); ``text``: per CLIP ("clip_l",
    "clip_g") its transformers names (``text_model.…``, ``text_projection.weight``); ``vae``: LDM
    names (``encoder.down.0.…``). ``unet_config`` describes the UNet in LDM terms (ComfyUI's
    model_config.unet_config); ``heads`` the attention heads of each CLIP; the groups of the
    GroupNorms and the latent scale come from the host's modules."""

    family: str
    unet_config: dict
    unet: dict
    text: dict
    vae: dict
    heads: dict
    unet_groups: int
    vae_groups: int
    latent_scale: float
    tokenizer_dir: str | None
    source: str


@dataclass
class HostBinding:
    """Where each parameter of the trainer's modules comes from in the host, to re-point them."""

    read: Callable[[], HostModel]  # the host's current tensors
    configs: dict
    targets: dict = field(default_factory=dict)  # (part, diffusers key) -> (module, attribute)
    bound: bool = False  # pointing at the host's tensors now (not meta)

    def bind(self) -> None:
        # let go first: reading may make the host move its weights (unload, load on the GPU), and
        # references kept meanwhile would hold the old copy alive beside the new one
        self.unbind()
        states = converted_states(self.read(), self.configs)
        for (part, key), (module, attr) in self.targets.items():
            module._parameters[attr] = torch.nn.Parameter(trainable_view(_lookup(states[part], key)),
                                                          requires_grad=False)
        self.bound = True

    def unbind(self) -> None:
        for module, attr in self.targets.values():
            weight = module._parameters[attr]
            module._parameters[attr] = torch.nn.Parameter(torch.empty_like(weight, device="meta"), requires_grad=False)
        self.bound = False


def trainable_view(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a normal tensor over the same memory (an inference tensor cannot join autograd)."""
    with torch.inference_mode(False):
        out = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        return out.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


def converted_states(host: HostModel, configs: dict) -> dict:
    """{part: {diffusers key: host tensor or a view of it}}, by diffusers' own LDM converters."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    states = {"unet": convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in host.unet.items()},
                                                  configs["unet"]),
              "vae": convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in host.vae.items()},
                                                configs["vae"])}
    for clip, part in TEXT_PARTS.items():
        if clip in host.text:
            keep = ("text_model.", "text_projection.") if part == "text_encoder_2" else ("text_model.",)
            states[part] = {k: v for k, v in host.text[clip].items() if k.startswith(keep)}
    return states


def _lookup(state: dict, key: str):
    """The host tensor for one of our keys. transformers 5's CLIPTextModel names its weights without
    the ``text_model.`` prefix that ComfyUI (and transformers 4) use."""
    return state[key] if key in state else state.get(f"text_model.{key}")


def _check_host(host: HostModel) -> None:
    if host.family not in ("sd15", "sdxl"):
        raise TrainerError(f"LoRA Train can use ComfyUI's MODEL/CLIP/VAE for SD1.5 and SDXL checkpoints, not "
                           f"{host.family}. For Kolors connect Kolors/SDXL Loader's pipeline instead.")
    wanted = {"sd15": {"clip_l"}, "sdxl": {"clip_l", "clip_g"}}[host.family]
    if set(host.text) != wanted:
        raise TrainerError(f"The CLIP holds {sorted(host.text) or 'no text encoder'}, but an "
                           f"{get_family(host.family).label} MODEL needs {sorted(wanted)}: connect the CLIP output of "
                           "the same CheckpointLoaderSimple as the MODEL.")
    for what, state in (("MODEL", host.unet), ("VAE", host.vae), *((c, s) for c, s in host.text.items())):
        odd = {str(t.dtype) for t in state.values() if t.is_floating_point() and t.element_size() == 1}
        if odd:
            raise TrainerError(f"The {what} weights are stored as {', '.join(sorted(odd))}: training needs fp16, bf16 "
                               "or fp32 weights. Set CheckpointLoaderSimple's / the loader's weight_dtype to default.")


def _empty(cls_or_fn):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls_or_fn()


def build_from_host(host: HostModel, read: Callable[[], HostModel] | None = None) -> LoadedModel:
    """A LoadedModel whose modules use ``host``'s tensors (nothing copied). ``read`` returns the
    host's current tensors later (for HostBinding.bind); default: ``host`` itself."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .single_file import CONFIGS, tokenizers_for

    _check_host(host)
    family = get_family(host.family)
    tokenizers = tokenizers_for(family, host.tokenizer_dir, CONFIGS / family.name)
    pooled = int(host.text["clip_g"]["text_projection.weight"].shape[0]) if "clip_g" in host.text else None
    configs = {"unet": unet_config(family.name, host.unet_config, host.unet_groups, pooled),
               "vae": vae_config(family.name, host.vae, host.vae_groups, host.latent_scale)}
    for clip, part in TEXT_PARTS.items():
        if clip in host.text:
            tokenizer = tokenizers["tokenizer" if part == "text_encoder" else "tokenizer_2"]
            configs[part] = clip_config(family.name, part, host.text[clip], host.heads[clip], tokenizer)
    with torch.inference_mode(False):
        parts = {"unet": _empty(lambda: UNet2DConditionModel.from_config(configs["unet"])),
                 "vae": _empty(lambda: AutoencoderKL.from_config(configs["vae"]))}
        for part, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            if part in configs:
                text_config = CLIPTextConfig(**{k: v for k, v in configs[part].items() if not k.startswith("_")})
                parts[part] = _empty(lambda: cls(text_config))
        binding = HostBinding(read or (lambda: host), configs)
        states = converted_states(host, configs)
        for part, module in parts.items():
            _share(module, states[part], part, binding)
        binding.bound = True
    for module in parts.values():
        module.requires_grad_(False)
        module.eval()
    pipe = family.build_pipeline({**parts, **tokenizers}, sampling_scheduler(family, None))
    model = LoadedModel(family, pipe, host.source, next(parts["unet"].parameters()).dtype)
    model.host = binding
    return model


def _share(module, state: dict, part: str, binding: HostBinding) -> None:
    """Point every parameter of ``module`` at its host tensor; a missing or misshapen one is an error."""
    own = dict(module.named_parameters())
    missing = sorted(k for k in own if _lookup(state, k) is None)
    if missing:
        raise TrainerError(f"The host's {part} lacks {len(missing)} weights of the architecture it describes "
                           f"(e.g. {missing[0]}): it is not a standard SD1.5/SDXL model. Load it with "
                           "Kolors/SDXL Loader instead.")
    for key, param in own.items():
        tensor = _lookup(state, key)
        if tuple(tensor.shape) != tuple(param.shape):
            raise TrainerError(f"The host's {part} weight {key} is {tuple(tensor.shape)}, the architecture it "
                               f"describes wants {tuple(param.shape)}: load this model with Kolors/SDXL Loader instead.")
        owner_name, _, attr = key.rpartition(".")
        owner = module.get_submodule(owner_name)
        owner._parameters[attr] = torch.nn.Parameter(trainable_view(tensor), requires_grad=False)
        binding.targets[(part, key)] = (owner, attr)
