"""Stable Diffusion 1.x: one CLIP-L text encoder, 512px, epsilon prediction."""

import torch

from ..models.parts import load_clip_tokenizer, load_transformers_model
from .base import Conditioning, Family, scaled_linear


class SD15(Family):
    def load_text_parts(self, folder, dtype, tokenizer_dir=None) -> dict:
        from transformers import CLIPTextModel

        return {
            "text_encoder": load_transformers_model(folder, "text_encoder", CLIPTextModel, dtype, "text encoder"),
            "tokenizer": load_clip_tokenizer(folder, "tokenizer", tokenizer_dir),
        }

    def encode_text(self, pipe, captions, device, clip_skip=None) -> Conditioning:
        if not clip_skip:
            context, _ = pipe.encode_prompt(captions, device, 1, False)
            return Conditioning(context)
        # diffusers' own clip_skip path reaches for `text_encoder.text_model`, which transformers 5
        # no longer has; same computation: an earlier layer through the final layer norm.
        encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        norm = getattr(encoder, "text_model", encoder).final_layer_norm
        return Conditioning(norm(hidden).to(encoder.dtype))


SD15_FAMILY = SD15(
    name="sd15",
    label="Stable Diffusion 1.5",
    pipeline_class_name="StableDiffusionPipeline",
    text_parts=("text_encoder", "tokenizer"),
    default_resolution=512,
    training_schedule=scaled_linear(1000, 0.012),
    sampling_schedule=dict(scaled_linear(1000, 0.012), steps_offset=1, timestep_spacing="leading"),
    base_model_version="sd_v1",
    modelspec_architecture="stable-diffusion-v1/lora",
)
