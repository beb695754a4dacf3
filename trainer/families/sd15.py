"""Stable Diffusion 1.x: one CLIP-L text encoder, 512px, epsilon prediction."""

from ..models.parts import load_clip_tokenizer, load_transformers_model
from .base import Conditioning, Family, scaled_linear
from .clip_chunks import chunk_count, encode_chunks, encode_for_sampling


class SD15(Family):
    def load_text_parts(self, folder, dtype, tokenizer_dir=None) -> dict:
        from transformers import CLIPTextModel

        return {
            "text_encoder": load_transformers_model(folder, "text_encoder", CLIPTextModel, dtype, "text encoder"),
            "tokenizer": load_clip_tokenizer(folder, "tokenizer", tokenizer_dir),
        }

    def encode_text(self, pipe, captions, device, clip_skip=None, max_token_length=None,
                    weighted=False) -> Conditioning:
        chunks = chunk_count(max_token_length)
        if chunks > 1 or weighted:  # kohya's own tokenization (clip_chunks.py)
            context, _ = encode_chunks(pipe.text_encoder, pipe.tokenizer, captions, device, chunks, weighted,
                                       layer=-1 - (clip_skip or 0), final_norm=True)
            return Conditioning(context.to(pipe.text_encoder.dtype))
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

    def sample_embeddings(self, pipe, prompt, negative, device, clip_skip=None, max_token_length=None) -> dict:
        """kohya's SD1.5 sample prompts: its long-prompt pipeline (up to 225 tokens, weights read)."""
        states, _ = encode_for_sampling(pipe.text_encoder, pipe.tokenizer, [prompt, negative or ""], device,
                                        layer=-1 - (clip_skip or 0), final_norm=True)
        states = states.to(pipe.text_encoder.dtype)
        return {"prompt_embeds": states[:1], "negative_prompt_embeds": states[1:]}


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
