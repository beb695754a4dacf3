"""SDXL: CLIP-L + OpenCLIP-G (pooled output from the second), size/crop micro-conditioning."""

import torch

from ..models.parts import load_clip_tokenizer, load_transformers_model
from .base import Conditioning, Family, scaled_linear


class SDXL(Family):
    def load_text_parts(self, folder, dtype, tokenizer_dir=None) -> dict:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return {
            "text_encoder": load_transformers_model(folder, "text_encoder", CLIPTextModel, dtype, "text encoder (CLIP-L)"),
            "text_encoder_2": load_transformers_model(
                folder, "text_encoder_2", CLIPTextModelWithProjection, dtype, "text encoder 2 (CLIP-G)"),
            "tokenizer": load_clip_tokenizer(folder, "tokenizer", tokenizer_dir),
            "tokenizer_2": load_clip_tokenizer(folder, "tokenizer_2", tokenizer_dir),
        }

    def encode_text(self, pipe, captions, device, clip_skip=None) -> Conditioning:
        context, _, pooled, _ = pipe.encode_prompt(
            captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False,
            clip_skip=clip_skip)
        return Conditioning(context, pooled)


SDXL_FAMILY = SDXL(
    name="sdxl",
    label="Stable Diffusion XL",
    pipeline_class_name="StableDiffusionXLPipeline",
    text_parts=("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    default_resolution=1024,
    training_schedule=scaled_linear(1000, 0.012),
    sampling_schedule=dict(scaled_linear(1000, 0.012), steps_offset=1, timestep_spacing="leading"),
    base_model_version="sdxl_base_v1-0",
    modelspec_architecture="stable-diffusion-xl-v1-base/lora",
    uses_time_ids=True,
)
