"""Builders for the LoRA interop tests: a live random LoRA on a model (UNet and CLIP text encoders, our
saver's kohya tensors), and the same tensors written in every other layout users have: LDM-named kohya,
ComfyUI's core trainer, diffusers/peft, DiffSynth-Studio. Full-size models only on the meta device."""

import json

import torch

from trainer.families import get_family
from trainer.families.base import CONV_TARGETS
from trainer.lora import diffsynth, names
from trainer.lora.kohya_format import peft_to_kohya
from trainer.lora.network import ADAPTER, add_unet_lora, conv_module_names, lora_state_dict
from trainer.models.single_file import CONFIGS

CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
TEXT_PARTS = {"sd15": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"], "kolors": []}


def real_unet_config(family):
    from diffusers import UNet2DConditionModel

    config = dict(UNet2DConditionModel.load_config(str(CONFIGS / ("sd15" if family == "sd15" else "sdxl") / "unet")))
    if family == "kolors":  # Kolors' UNet: SDXL's with the ChatGLM text projection
        config.update(encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
                      projection_class_embeddings_input_dim=5632)
    return config


def unet_lora(unet, family, rank=4, alpha=2.0, conv=True, seed=None):
    """Our training-time LoRA on ``unet`` (attention + conv), as the kohya tensors our saver writes."""
    add_unet_lora(unet, rank, alpha, get_family(family).lora_targets, conv_rank=rank if conv else 0, conv_alpha=1.0,
                  conv_targets=CONV_TARGETS)
    if seed is not None:
        randomize(unet, seed)
    convs = conv_module_names(unet, CONV_TARGETS) if conv else ()
    return peft_to_kohya(lora_state_dict(unet, ADAPTER), alpha, conv_modules=convs)


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:  # peft starts up-weights at zero: give the LoRA an effect
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def text_lora(encoder, component, family, rank=4, alpha=2.0, seed=None):
    """A kohya text-encoder LoRA (CLIPAttention + CLIPMLP, kohya's targets) on ``encoder``, injected live."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=CLIP_TARGETS), encoder,
                            adapter_name="te")
    if seed is not None:
        randomize(encoder, seed)
    out = {}
    for key, value in get_peft_model_state_dict(encoder, adapter_name="te").items():
        path, part = key.rsplit(".lora_", 1)
        name = names.kohya_name(component, path, family)
        out[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value.detach().clone()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out

def meta_text_encoder(family, component):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**json.loads((CONFIGS / family / component / "config.json").read_text()))
    return (CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel)(config)


def rename_unet(tensors, config, fn):
    """Rename every lora_unet_ module with ``fn(diffusers path) -> new module name``."""
    lookup = {p.replace(".", "_"): p for p in names.unet_modules(config)}
    out = {}
    for key, value in tensors.items():
        module, _, part = key.partition(".")
        out[f"{fn(lookup[module[len('lora_unet_'):]])}.{part}" if module.startswith("lora_unet_") else key] = value
    return out


def to_ldm_name(config):
    to_ldm = {path: ldm for ldm, path in names.ldm_to_diffusers(config).items()}
    return lambda path: "lora_unet_" + to_ldm[path].replace(".", "_")


def comfy_trainer_file(tensors, config):
    """ComfyUI core trainer layout: diffusion_model.<LDM path>.lora_up.weight / lora_down / alpha, conv
    LoRA flattened to 2-D, plus a norm '.diff' (skipped on import: no LoRA form)."""
    to_ldm = {path: ldm for ldm, path in names.ldm_to_diffusers(config).items()}
    lookup = {p.replace(".", "_"): p for p in names.unet_modules(config)}
    out = {"diffusion_model.out.0.weight.diff": torch.zeros(4)}
    for key, value in tensors.items():
        module, _, part = key.partition(".")
        if module.startswith("lora_unet_"):
            value = value.flatten(1) if value.ndim == 4 else value
            out[f"diffusion_model.{to_ldm[lookup[module[len('lora_unet_'):]]]}.{part}"] = value
    return out


def peft_file(tensors, config, family, tmp_path, peft_config=None, te_config=None):
    """diffusers' own saver (save_lora_weights): unet.<path>.lora_A.weight, text_encoder(_2).<path>..."""
    from diffusers import StableDiffusionXLPipeline

    lookup = {p.replace(".", "_"): p for p in names.unet_modules(config)}
    layers = {"unet": {}, "text_encoder": {}, "text_encoder_2": {}}
    for key, value in tensors.items():
        module, _, part = key.partition(".")
        if part == "alpha":
            continue
        ab = "lora_A" if part.startswith("lora_down") else "lora_B"
        if module.startswith("lora_unet_"):
            layers["unet"][f"{lookup[module[len('lora_unet_'):]]}.{ab}.weight"] = value
        else:
            prefix, _, rest = module.partition("_text_model_")
            component = names.te_component(prefix, family)
            layers[component][f"{names.te_path('text_model_' + rest)}.{ab}.weight"] = value
    kwargs = {f"{c}_lora_layers": v for c, v in layers.items() if v}
    if peft_config:
        kwargs["unet_lora_adapter_metadata"] = peft_config
    for component in ("text_encoder", "text_encoder_2"):
        if te_config and layers[component]:
            kwargs[f"{component}_lora_adapter_metadata"] = te_config
    StableDiffusionXLPipeline.save_lora_weights(str(tmp_path), weight_name="peft.safetensors", **kwargs)
    return tmp_path / "peft.safetensors"


def diffsynth_state(tensors, config, dtype=torch.float32):
    """DiffSynth-Studio's names (blocks.N..., peft's .default. adapter, no alpha) for a UNet-only LoRA."""
    table = diffsynth.block_table(config)
    prefixes = sorted(((p, i) for i, p in table.items()), key=lambda t: -len(t[0]))
    lookup = {p.replace(".", "_"): p for p in names.unet_modules(config)}
    out = {}
    for key, value in tensors.items():
        module, _, part = key.partition(".")
        if part == "alpha":
            continue
        path = lookup[module[len("lora_unet_"):]]
        prefix, index = next((p, i) for p, i in prefixes if path.startswith(p + "."))
        rest = path[len(prefix) + 1:].replace("to_out.0", "to_out")
        ab = "lora_A" if part.startswith("lora_down") else "lora_B"
        out[f"blocks.{index}.{rest}.{ab}.default.weight"] = value.to(dtype)
    return out

