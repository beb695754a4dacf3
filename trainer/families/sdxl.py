"""SDXL: CLIP-L + OpenCLIP-G (pooled output from the second), size/crop micro-conditioning."""

import torch

from ..models.parts import load_clip_tokenizer, load_transformers_model
from .base import Conditioning, Family, scaled_linear
from .clip_chunks import chunk_count, encode_chunks


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

    def encode_text(self, pipe, captions, device, clip_skip=None, max_token_length=None,
                    weighted=False) -> Conditioning:
        chunks = chunk_count(max_token_length)
        if chunks > 1 or weighted:
            return self._encode_chunks(pipe, captions, device, clip_skip, chunks, weighted)
        context, _, pooled, _ = pipe.encode_prompt(
            captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False,
            clip_skip=clip_skip)
        return Conditioning(context, pooled)

    def _encode_chunks(self, pipe, captions, device, clip_skip, chunks, weighted) -> Conditioning:
        """kohya's tokenization (clip_chunks.py); the penultimate layer of both encoders as diffusers
        and kohya take it, the pooled output of CLIP-G's first 77-token row."""
        layer, dtype = -2 - (clip_skip or 0), pipe.text_encoder_2.dtype
        first, _ = encode_chunks(pipe.text_encoder, pipe.tokenizer, captions, device, chunks, weighted, layer, False)
        second, pooled = encode_chunks(pipe.text_encoder_2, pipe.tokenizer_2, captions, device, chunks, weighted,
                                       layer, False)
        return Conditioning(torch.cat([first.to(dtype), second.to(dtype)], dim=-1), pooled.to(dtype))

    def sample_embeddings(self, pipe, prompt, negative, device, clip_skip=None, max_token_length=None) -> dict:
        """kohya's SDXL sample prompts: the training encoding with weights read, negative "" encoded."""
        cond = self._encode_chunks(pipe, [prompt, negative or ""], device, clip_skip,
                                   chunk_count(max_token_length), True)
        return {"prompt_embeds": cond.context[:1], "negative_prompt_embeds": cond.context[1:],
                "pooled_prompt_embeds": cond.pooled[:1], "negative_pooled_prompt_embeds": cond.pooled[1:]}


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
