"""LoRA Save: the trained LoRA into models/loras, never outside it, never over another file."""

from __future__ import annotations

import re

from ..trainer.errors import TrainerError
from ..trainer.names import free_file, safe_name
from ..trainer.save_fallback import save_with_fallback
from . import comfy_env


def lora_stem(name: str) -> str:
    """The widget's name as a safe file stem (trainer/names.py), without a typed .safetensors."""
    return safe_name(re.sub(r"\.safetensors\s*$", "", name.strip(), flags=re.IGNORECASE), default="my_lora")


class LoraSave:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    DESCRIPTION = "Saves the LoRA to models/loras/<name>.safetensors (kohya format: loads in LoraLoader)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": ("LT_LORA", {"tooltip": "From LoRA Train."}),
            "name": ("STRING", {"default": "my_lora", "tooltip": "File name in models/loras; an existing file is "
                                "never replaced unless overwrite is on (a _1, _2 suffix is added)."}),
            "precision": (["fp16", "bf16", "fp32"], {"default": "fp16", "tooltip": "fp16 is seed 000's advice: half "
                          "the size, no visible loss."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace a file of the same name."}),
            "format": (["kohya", "diffusers"], {"default": "kohya", "tooltip": "kohya: loads in ComfyUI's LoraLoader, "
                       "A1111 and kohya tools. diffusers: for diffusers' load_lora_weights / peft."}),
        }}

    def save(self, lora, name, precision, overwrite, format="kohya"):
        from ..trainer.lora.kohya_format import save_lora

        folder = comfy_env.model_folders("loras")[0]
        stem = lora_stem(name)
        path, problem = save_with_fallback(lambda target: save_lora(lora, target, precision, layout=format),
                                           free_file(folder, stem, overwrite=overwrite), stem, "LoRA")
        if problem:
            raise TrainerError(f"LoRA Save: {problem} Free some disk space, or copy it into models/loras yourself.")
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}
