"""Kolors from separate files, the layout Kolors-MZ users have in ComfyUI:

    models/unet/<kolors unet>.safetensors        the UNet (diffusers key names)
    models/LLM/chatglm3-fp16.safetensors         ChatGLM3-6B (ChatGLMModel keys, optional "transformer." prefix)
    models/vae/sdxl_vae(_fp16_fix).safetensors   the SDXL VAE
    tokenizer.model                              ChatGLM's sentencepiece model

Component configs come from trainer/models/configs/kolors/ (the real Kolors UNet: SDXL's with
text_proj 4096 -> 2048; ChatGLM3-6B), or ``config_dir`` (tests use a tiny model's folder).
Weights are loaded straight into the requested dtype onto empty modules: the 6B ChatGLM never
exists twice in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import TrainerError
from ..families import get_family

CONFIGS = Path(__file__).parent / "configs" / "kolors"


def _state(path: Path, dtype, strip: str = "") -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainerError(f"File not found: {path}.")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors' own error types
        raise TrainerError(f"Cannot read {path}: {err}. The file is corrupt or not a .safetensors file.") from None
    return {(k[len(strip):] if strip and k.startswith(strip) else k): v.to(dtype) for k, v in state.items()}


def _fill(module, state: dict, path: Path, what: str):
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if "inv_freq" not in k]
    if missing or unexpected:
        raise TrainerError(f"{path.name} is not a Kolors {what}: {len(missing)} weights missing "
                           f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}).")
    return module.eval()


def load_kolors_files(unet_file, text_encoder_file, vae_file, tokenizer_file, dtype=torch.float16,
                      config_dir=None):
    from accelerate import init_empty_weights
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    from .loader import LoadedModel, load_vae

    configs = Path(config_dir) if config_dir else CONFIGS
    unet_file, te_file = Path(unet_file), Path(text_encoder_file)
    if not vae_file:
        raise TrainerError("Kolors from separate files needs a VAE file too: put sdxl_vae (or sdxl-vae-fp16-fix) "
                           "in models/vae and choose it.")
    if not tokenizer_file or not Path(tokenizer_file).is_file():
        raise TrainerError("ChatGLM tokenizer.model not found: put it beside the chatglm3 file in models/LLM, or "
                           "keep the Kolors folder (text_encoder/tokenizer.model) in models/diffusers.")
    unet_config = json.loads((configs / "unet" / "config.json").read_text(encoding="utf-8"))
    te_config = json.loads((configs / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        encoder = ChatGLMModel(ChatGLMConfig(**te_config))
    unet = _fill(unet, _state(unet_file, dtype), unet_file, "UNet")
    encoder = _fill(encoder, _state(te_file, dtype, strip="transformer."), te_file, "ChatGLM3 text encoder")
    family = get_family("kolors")
    parts = {"unet": unet, "text_encoder": encoder, "tokenizer": ChatGLMTokenizer(str(tokenizer_file)),
             "vae": load_vae(vae_file, "kolors")}
    pipe = family.build_pipeline(parts, EulerDiscreteScheduler.from_config(family.sampling_schedule))
    for module in (unet, encoder, parts["vae"]):
        module.requires_grad_(False)
    return LoadedModel(family, pipe, str(unet_file), dtype)
