"""Kolors: SDXL UNet conditioned by ChatGLM3 (context = hidden_states[-2], pooled = last token
of hidden_states[-1], left-padded to 256 tokens), trained on a 1100-step schedule."""

from pathlib import Path

from ..data.prompt_weights import plain_text
from ..errors import TrainerError
from ..models.parts import find_file, load_transformers_model
from .base import Conditioning, Family, scaled_linear

MAX_LENGTH = 256


class Kolors(Family):
    def load_text_parts(self, folder, dtype, tokenizer_dir=None, bits: int = 0) -> dict:
        from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer

        folder = Path(folder)
        # Kolors' own repo keeps tokenizer.model beside the encoder; Kolors-diffusers in tokenizer/.
        places = [tokenizer_dir, folder / "tokenizer", folder / "text_encoder"]
        vocab = find_file(places, "tokenizer.model")
        if vocab is None:
            raise TrainerError(
                "ChatGLM tokenizer not found: looked for tokenizer.model in "
                + ", ".join(str(p) for p in places if p)
                + ". Copy tokenizer.model from the Kolors download (text_encoder/ or tokenizer/) there.")
        extra = {}
        if bits:  # bitsandbytes on CUDA: ChatGLM3-6B in 8-bit ~6.5 GB, in 4-bit ~4 GB
            from transformers import BitsAndBytesConfig

            extra["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
                                            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype))
        encoder = load_transformers_model(folder, "text_encoder", ChatGLMModel, dtype, "ChatGLM3 text encoder", **extra)
        return {"text_encoder": encoder, "tokenizer": ChatGLMTokenizer(str(vocab))}

    def build_pipeline(self, parts: dict, scheduler):
        # prompts are encoded in one pass: no key/value cache to keep (transformers 4.x also has no
        # default for it, and diffusers' ChatGLM reads config.use_cache)
        if parts.get("text_encoder") is not None:
            parts["text_encoder"].config.use_cache = False
        return super().build_pipeline(parts, scheduler)

    def encode_text(self, pipe, captions, device, clip_skip=None, max_token_length=None,
                    weighted=False) -> Conditioning:
        # ChatGLM reads 256 tokens and takes no per-token weights: the "(word:1.2)" marks go
        if weighted:
            captions = [plain_text(c) for c in captions]
        context, _, pooled, _ = pipe.encode_prompt(
            captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False,
            max_sequence_length=MAX_LENGTH)
        return Conditioning(context, pooled)


KOLORS_FAMILY = Kolors(
    name="kolors",
    label="Kolors",
    pipeline_class_name="KolorsPipeline",
    text_parts=("text_encoder", "tokenizer"),
    default_resolution=1024,
    training_schedule=scaled_linear(1100, 0.014),
    sampling_schedule=dict(scaled_linear(1100, 0.014), steps_offset=1, timestep_spacing="leading"),
    base_model_version="kolors",
    modelspec_architecture="kolors/lora",
    uses_time_ids=True,
)
