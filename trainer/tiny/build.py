"""Write tiny SD1.5, SDXL and Kolors models to disk in the formats real ones come in.

``write_tiny_model(family, folder)`` writes a diffusers folder (model_index.json, unet/, vae/,
text_encoder(s)/, tokenizer(s)/, scheduler/); ``write_tiny_checkpoint(family, file)`` writes the
single-file (LDM/SGM key layout) .safetensors that ComfyUI users keep in models/checkpoints.
Weights are random but seeded, so every output is finite and every run is the same, except the
VAE's: it is set analytically (vae_weights.py) so that it really reconstructs pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..families import get_family
from . import configs
from .tokenizers import clip_vocab_size, write_chatglm_tokenizer, write_clip_tokenizer
from .vae_weights import make_reconstructing

CHATGLM_VOCAB = 64


def _model_index(family, parts: dict) -> dict:
    index = {"_class_name": family.pipeline_class_name, "_diffusers_version": "0.42.1"}
    for name, obj in parts.items():
        module = type(obj).__module__
        library = "kolors" if "kolors" in module else module.split(".")[0]
        index[name] = [library, type(obj).__name__]
    if family.name == "sd15":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return index


def _init_chatglm(model) -> None:
    """ChatGLM's _init_weights is a no-op and its RMSNorm weights start empty: set them here."""
    gen = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        with torch.no_grad():
            if "norm" in name:
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def build_tiny_parts(family_name: str, tokenizer_folder: Path, seed: int = 0) -> dict:
    """Instantiate the tiny components (tokenizers are written to ``tokenizer_folder``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    family = get_family(family_name)
    parts: dict = {}
    if family.name == "kolors":
        from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
        from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

        write_chatglm_tokenizer(tokenizer_folder / "text_encoder", CHATGLM_VOCAB)
        tok = ChatGLMTokenizer(str(tokenizer_folder / "text_encoder" / "tokenizer.model"))
        encoder = ChatGLMModel(ChatGLMConfig(**configs.chatglm(tok.tokenizer.n_words)), empty_init=False)
        _init_chatglm(encoder)
        parts.update(text_encoder=encoder, tokenizer=tok)
        unet_config = configs.UNET_KOLORS
    else:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        vocab = clip_vocab_size()
        write_clip_tokenizer(tokenizer_folder / "tokenizer")
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs.clip_text(vocab)))
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(str(tokenizer_folder / "tokenizer"))
        if family.name == "sdxl":
            write_clip_tokenizer(tokenizer_folder / "tokenizer_2", pad_token="!")
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**configs.clip_text(vocab, True)))
            parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(tokenizer_folder / "tokenizer_2"))
            unet_config = configs.UNET_SDXL
        else:
            unet_config = configs.UNET_SD15
    parts["unet"] = UNet2DConditionModel(**unet_config)
    parts["vae"] = AutoencoderKL(**configs.VAE)
    make_reconstructing(parts["vae"])  # analytic weights: pictures decode to what was encoded
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return parts


def write_tiny_model(family_name: str, folder, seed: int = 0, prediction_type: str | None = None) -> Path:
    """Write a tiny diffusers folder for ``family_name`` (sd15, sdxl, kolors); returns it.
    ``prediction_type`` ("epsilon", "v_prediction") overrides the family's in scheduler/, as a
    v-prediction model (SD2-768, v-pred SDXL finetunes) ships it."""
    from diffusers import EulerDiscreteScheduler

    family = get_family(family_name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = build_tiny_parts(family.name, folder, seed)
    for name, obj in parts.items():
        if isinstance(obj, torch.nn.Module):
            obj.save_pretrained(str(folder / name), safe_serialization=True)
    if family.name == "kolors":  # Kolors' own layout: tokenizer files beside the encoder
        (folder / "text_encoder" / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "ChatGLMTokenizer", "padding_side": "left"}, indent=2))
    schedule = dict(family.sampling_schedule, **({"prediction_type": prediction_type} if prediction_type else {}))
    scheduler = EulerDiscreteScheduler.from_config(schedule)
    scheduler.save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps(
        dict(_model_index(family, parts), scheduler=["diffusers", "EulerDiscreteScheduler"]), indent=2))
    return folder


def write_tiny_checkpoint(family_name: str, file, seed: int = 0) -> Path:
    """Write a tiny single-file checkpoint (SD1.5 or SDXL, LDM/SGM key names)."""
    import tempfile

    from ..models.ldm_write import write_single_file

    family = get_family(family_name)
    with tempfile.TemporaryDirectory() as tmp:
        parts = build_tiny_parts(family.name, Path(tmp), seed)
        return write_single_file(family.name, parts, file, embed_configs=True)
