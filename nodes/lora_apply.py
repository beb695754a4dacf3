"""LoRA Apply: a LoRA onto ComfyUI's MODEL and CLIP the way core LoraLoader does it.

ComfyUI's own ``comfy.sd.load_lora_for_models`` clones the ModelPatchers and adds the LoRA as
weight patches (applied when a sampler loads the model, removed after; no weights copied). The
LoRA may come straight from LoRA Train (LT_LORA or ComfyUI's LORA_MODEL: usable in the same
graph, before any file exists) or from a file in models/loras in any layout LoRA Load reads.
"""

from __future__ import annotations

from pathlib import Path

from ..trainer.errors import TrainerError
from . import comfy_env

NONE = "none"


def lora_tensors(lora, lora_name: str, family: str | None) -> dict:
    """The LoRA as kohya-named tensors: from the link when connected, else from the file."""
    if lora is not None:
        tensors = getattr(lora, "tensors", lora)  # LT_LORA (TrainedLora) or LORA_MODEL (a dict)
        if not isinstance(tensors, dict) or not tensors:
            raise TrainerError("LoRA Apply: the connected lora holds no LoRA weights (did training stop before its "
                               "first step?).")
        return tensors
    if not lora_name or lora_name == NONE:
        raise TrainerError("LoRA Apply: connect a lora (from LoRA Train) or pick a lora_name from models/loras.")
    path = comfy_env.full_path("loras", lora_name)
    if path is None:
        raise TrainerError(f"LoRA '{lora_name}' not found in models/loras: refresh the list (press R).")
    from ..trainer.lora.formats import read_lora_file

    return read_lora_file(Path(path), family)


def model_family(model) -> str | None:
    from .comfy_models import FAMILIES

    return FAMILIES.get(type(model.model.model_config).__name__)


class LoraApply:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    FUNCTION = "apply"
    DESCRIPTION = ("Applies a LoRA to MODEL and CLIP as core LoraLoader does (text-encoder LoRA included): straight "
                   "from LoRA Train in the same graph, or a file from models/loras.")

    @classmethod
    def INPUT_TYPES(cls):
        files = comfy_env.list_files("loras", (".safetensors", ".ckpt", ".pt"))
        return {"required": {
            "model": ("MODEL", {"tooltip": "The MODEL to patch (e.g. from CheckpointLoaderSimple)."}),
            "clip": ("CLIP", {"tooltip": "The CLIP to patch; the LoRA's text-encoder part goes here."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                         "tooltip": "LoRA strength on the UNet (1.0 = as trained, 0 = off)."}),
            "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                        "tooltip": "LoRA strength on the text encoder(s)."}),
        }, "optional": {
            "lora": ("LT_LORA,LORA_MODEL", {"tooltip": "A LoRA from LoRA Train (lora or lora_model output); wins over "
                                            "lora_name."}),
            "lora_name": ([NONE] + files, {"default": NONE, "tooltip": "Or a LoRA file from models/loras (kohya, "
                                           "diffusers/peft, LyCORIS, DiffSynth .ckpt)."}),
        }}

    def apply(self, model, clip, strength_model, strength_clip, lora=None, lora_name=NONE):
        if comfy_env.comfy_sd is None:
            raise TrainerError("LoRA Apply patches ComfyUI's MODEL/CLIP and runs inside ComfyUI only.")
        tensors = lora_tensors(lora, lora_name, model_family(model))
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)  # as core LoraLoader: nothing to patch
        return comfy_env.comfy_sd.load_lora_for_models(model, clip, tensors, strength_model, strength_clip)
