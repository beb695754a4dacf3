"""Sampler preview: text-to-image with the pipeline (and its LoRA) as a ComfyUI IMAGE."""

from __future__ import annotations

from ..trainer.sample import SAMPLERS
from .images import preview, to_image_tensor


class SamplerPreview:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "sample"
    OUTPUT_NODE = True
    DESCRIPTION = "Generates with the pipeline and its LoRA; connect to Save Image or Preview Image."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": ("LT_PIPELINE", {"tooltip": "From the loader, LoRA Load or LoRA Train."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Start with your trigger word."}),
            "negative": ("STRING", {"multiline": True, "default": "", "tooltip": "What to avoid."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Same seed, same picture."}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 200, "tooltip": "Denoising steps (20-30 is usual)."}),
            "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Prompt strength (Kolors ~5-6, SDXL ~6-7, SD1.5 ~7)."}),
            "width": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 8, "tooltip": "Image width."}),
            "height": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 8, "tooltip": "Image height."}),
            "sampler": (list(SAMPLERS), {"default": "euler_a", "tooltip": "euler_a, dpmpp_2m_karras are safe picks."}),
            "lora_strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                        "tooltip": "Strength of every LoRA on the pipeline (0 = base model)."}),
        }}

    def sample(self, pipeline, prompt, negative, seed, steps, cfg, width, height, sampler, lora_strength):
        from ..trainer.sample import generate

        from . import comfy_env

        with comfy_env.on_device(pipeline):
            image = generate(pipeline, prompt, negative, seed, steps, cfg, width, height, sampler, lora_strength)
        return {"ui": {"images": preview(image)}, "result": (to_image_tensor(image),)}
