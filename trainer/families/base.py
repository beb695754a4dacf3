"""What every model family adapter knows: parts, conditioning, noise schedule, LoRA targets.

One adapter per family (SD1.5, SDXL, Kolors) keeps family differences in one small file each;
the training loop, the saver and the sampler only talk to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Attention projections of every diffusers Transformer2DModel block: self-attention (attn1),
# cross-attention (attn2, the text conditioning) and the output projection.
ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# kohya's conv LoRA (LoCon, conv_dim): the 3x3 convs of ResNet blocks and of the samplers.
CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]


@dataclass
class Conditioning:
    """Text conditioning for a batch, in the shapes the UNet takes."""

    context: torch.Tensor  # [B, tokens, dim] -> encoder_hidden_states
    pooled: torch.Tensor | None = None  # [B, dim] -> added_cond_kwargs["text_embeds"]

    def to(self, device=None, dtype=None) -> "Conditioning":
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return Conditioning(self.context.to(device=device, dtype=dtype), pooled)


@dataclass
class Family:
    name: str  # "sd15", "sdxl", "kolors": the value users type
    label: str
    pipeline_class_name: str  # diffusers pipeline used for sampling
    text_parts: tuple[str, ...]  # pipeline attributes holding text encoders / tokenizers
    default_resolution: int
    training_schedule: dict  # DDPMScheduler config used for training noise
    sampling_schedule: dict  # scheduler config used when a model folder has none
    base_model_version: str  # kohya's ss_base_model_version
    modelspec_architecture: str
    lora_targets: list[str] = field(default_factory=lambda: list(ATTENTION_TARGETS))
    uses_time_ids: bool = False

    # -- loading ------------------------------------------------------------------------------
    def load_text_parts(self, folder, dtype, tokenizer_dir=None) -> dict:
        raise NotImplementedError

    def build_pipeline(self, parts: dict, scheduler):
        import diffusers

        cls = getattr(diffusers, self.pipeline_class_name)
        extra = {}
        if self.name == "sd15":
            extra = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = cls(scheduler=scheduler, **parts, **extra)
        pipe.set_progress_bar_config(disable=True)
        fit_tokenizers_to_encoders(pipe)
        return pipe

    # -- conditioning -------------------------------------------------------------------------
    def encode_text(self, pipe, captions: list[str], device, clip_skip: int | None = None,
                    max_token_length: int | None = None, weighted: bool = False) -> Conditioning:
        """Conditioning for ``captions``; runs with gradients when the caller enables them (text-
        encoder LoRA training), so callers that only read it wrap it in torch.no_grad().
        max_token_length / weighted: kohya's options for CLIP encoders (clip_chunks.py)."""
        raise NotImplementedError

    def sample_embeddings(self, pipe, prompt: str, negative: str, device, clip_skip: int | None = None,
                          max_token_length: int | None = None) -> dict | None:
        """The pipeline's prompt arguments as kohya encodes sample prompts, or None: the pipeline's own."""
        return None

    def time_ids(self, original_size, crop_top_left, target_size) -> torch.Tensor:
        """SDXL-style micro-conditioning: (orig h, orig w, crop top, crop left, target h, w)."""
        ids = list(original_size) + list(crop_top_left) + list(target_size)
        return torch.tensor(ids, dtype=torch.float32)

    def unet_kwargs(self, pipe, cond: Conditioning, time_ids: torch.Tensor | None) -> dict:
        kwargs = {"encoder_hidden_states": cond.context}
        if self.uses_time_ids:
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": time_ids}
        return kwargs

    def training_scheduler(self, v_prediction: bool = False, zero_terminal_snr: bool = False):
        """The DDPM schedule training noise follows. zero_terminal_snr: kohya's
        fix_noise_scheduler_betas_for_zero_terminal_snr, which is diffusers' rescale_betas_zero_snr
        (arxiv.org/abs/2305.08891 Algorithm 1; the same betas to the bit)."""
        from diffusers import DDPMScheduler

        kind = "v_prediction" if v_prediction else self.training_schedule["prediction_type"]
        extra = {"rescale_betas_zero_snr": True} if zero_terminal_snr else {}
        return DDPMScheduler(**{**self.training_schedule, "prediction_type": kind, **extra})


def fit_tokenizers_to_encoders(pipe) -> None:
    """Pad and truncate CLIP prompts to the length the text encoder takes (77 for every SD/SDXL CLIP).

    The tokenizer file's ``model_max_length`` is not that length: ComfyUI's comfy/sd1_tokenizer
    says 8192 (ComfyUI chunks long prompts itself), and the pipelines' ``encode_prompt`` pads to
    ``tokenizer.model_max_length``. The encoder's position table is what decides.
    """
    for tok_name, enc_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tokenizer, encoder = getattr(pipe, tok_name, None), getattr(pipe, enc_name, None)
        positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
        if tokenizer is not None and isinstance(positions, int) and hasattr(tokenizer, "model_max_length"):
            tokenizer.model_max_length = positions


def scaled_linear(num_train_timesteps: int, beta_end: float, **extra) -> dict:
    return dict(
        num_train_timesteps=num_train_timesteps,
        beta_start=0.00085,
        beta_end=beta_end,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        **extra,
    )
