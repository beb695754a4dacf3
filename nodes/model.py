"""Kolors/SDXL Loader and LoRA Load: models from ComfyUI's model folders into an LT_PIPELINE."""

from __future__ import annotations

from pathlib import Path

import torch

from ..trainer.errors import TrainerError
from . import comfy_env

FAMILIES = ["auto", "kolors", "sdxl", "sd15"]
DTYPES = ["fp16", "bf16", "fp32"]


def model_choices() -> list[str]:
    folders = [f"diffusers/{name}" for name in comfy_env.list_model_dirs("diffusers")]
    files = [f"checkpoints/{name}" for name in comfy_env.list_files("checkpoints")]
    unets = [f"unet/{name}" for name in comfy_env.list_files("unet")]  # Kolors-MZ: UNet file + chatglm3 + VAE
    return folders + files + unets or ["(put a model in models/diffusers or models/checkpoints)"]


def find_chatglm_tokenizer(llm_file: Path) -> Path | None:
    """tokenizer.model beside the chatglm3 file, in a Kolors folder's text_encoder/, or in an
    installed Kolors-MZ pack's configs/tokenizer/."""
    places = [llm_file.parent, llm_file.parent / "tokenizer"]
    for folder in comfy_env.model_folders("diffusers"):
        places += [p / "text_encoder" for p in folder.glob("*")] + [p / "tokenizer" for p in folder.glob("*")]
    for root in comfy_env.custom_nodes_dirs():
        places += [p / "configs" / "tokenizer" for p in root.glob("*Kolors*")]
    return next((p / "tokenizer.model" for p in places if (p / "tokenizer.model").is_file()), None)


def comfy_tokenizer_dir() -> str | None:
    """ComfyUI's own CLIP tokenizer files (single-file checkpoints carry none)."""
    if not comfy_env.IN_COMFY:
        return None
    import comfy

    # comfy is a namespace package (no __init__.py): its folder is in __path__, not __file__
    folder = Path(list(comfy.__path__)[0]) / "sd1_tokenizer"
    return str(folder) if folder.is_dir() else None


def resolve_model(choice: str) -> Path:
    kind, _, name = choice.partition("/")
    path = comfy_env.full_path(kind, name) if name else None
    if path is None:
        raise TrainerError(f"Model '{choice}' not found: put a diffusers folder in models/diffusers/ or a "
                           ".safetensors checkpoint in models/checkpoints/, then refresh (press R).")
    return path


def load_kolors_mz(unet_file: Path, chatglm3: str, vae_path, dtype):
    from ..trainer.models.kolors_files import load_kolors_files
    from ..trainer.models.loader import to_dtype

    llm = comfy_env.full_path("LLM", chatglm3) if chatglm3 and chatglm3 != "none" else None
    if llm is None:
        raise TrainerError("A UNet file from models/unet is Kolors in Kolors-MZ's layout: also choose its "
                           "chatglm3 file (models/LLM) and a VAE (models/vae).")
    return load_kolors_files(unet_file, llm, vae_path, find_chatglm_tokenizer(llm), to_dtype(dtype))


class KolorsSDXLLoader:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_PIPELINE",)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "load"
    DESCRIPTION = "Loads a Kolors, SDXL or SD1.5 model for training and preview sampling."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_choices(), {"tooltip": "A diffusers folder in models/diffusers (Kolors' own layout) "
                                                    "or a single-file checkpoint in models/checkpoints (SDXL, SD1.5)."}),
            "family": (FAMILIES, {"default": "auto", "tooltip": "Detected from the files; override only if wrong."}),
            "dtype": (DTYPES, {"default": "fp16", "tooltip": "Weight precision of UNet and text encoders. fp16/bf16 "
                                                            "halve memory; the VAE always stays fp32."}),
        }, "optional": {
            "vae": (["none"] + comfy_env.list_files("vae"), {"default": "none", "tooltip": "A separate VAE, e.g. "
                    "sdxl-vae-fp16-fix (seed 001 uses it for Kolors). 'none' keeps the model's own."}),
            "chatglm_precision": (["same as dtype", "8-bit", "4-bit"], {"default": "same as dtype", "tooltip":
                                  "Kolors only: ChatGLM3-6B is 12 GB in fp16; 8-bit (~6.5 GB) or 4-bit (~4 GB) need "
                                  "an NVIDIA GPU (bitsandbytes). Or cache text outputs and release it."}),
            "chatglm3": (["none"] + comfy_env.list_files("LLM"), {"default": "none", "tooltip": "With a UNet file "
                         "from models/unet (Kolors-MZ layout): the ChatGLM3 file in models/LLM (e.g. "
                         "chatglm3-fp16.safetensors); its tokenizer.model is looked for beside it."}),
            "offload": (["keep loaded", "cpu between nodes"], {"default": "keep loaded", "tooltip":
                        "cpu between nodes: the pipeline waits in RAM and moves to the GPU only while a node of "
                        "this pack uses it, leaving VRAM to other nodes."}),
        }}

    def load(self, model, family, dtype, vae="none", chatglm_precision="same as dtype", offload="keep loaded",
             chatglm3="none"):
        from ..trainer.models.loader import load_model

        vae_path = comfy_env.full_path("vae", vae) if vae and vae != "none" else None
        # ComfyUI runs nodes under inference_mode: weights made there could never be trained.
        with torch.inference_mode(False):
            bits = {"8-bit": 8, "4-bit": 4}.get(chatglm_precision, 0)
            if model.startswith("unet/"):
                loaded = load_kolors_mz(resolve_model(model), chatglm3, vae_path, dtype)
            else:
                loaded = load_model(resolve_model(model), family, dtype, vae_path=vae_path,
                                    tokenizer_dir=comfy_tokenizer_dir(), text_encoder_bits=bits)
        loaded.offload = offload == "cpu between nodes"
        # what `python -m trainer train` needs to load the same model (LoRA Train's headless command)
        loaded.cli_settings = {"model_family": loaded.family.name, "vae": str(vae_path or ""),
                               "tokenizer_dir": str(comfy_tokenizer_dir() or "")}
        if model.startswith("unet/"):
            loaded.cli_settings["note"] = (
                "This model came as separate UNet / ChatGLM3 / VAE files, which the CLI does not load: set "
                "pretrained_model_name_or_path in the .toml to a Kolors diffusers folder.")
        if loaded.offload:
            loaded.to("cpu")
        return (loaded,)


class LoraLoad:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_PIPELINE",)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "apply"
    DESCRIPTION = ("Applies a LoRA file from models/loras to the pipeline: kohya, diffusers/peft, ComfyUI-trainer and "
                   "DiffSynth .ckpt LoRAs, and LyCORIS files (LoCon, LoHa, LoKr, DoRA, OFT).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": ("LT_PIPELINE", {"tooltip": "From Kolors/SDXL Loader or LoRA Train."}),
            "lora_name": (comfy_env.list_files("loras", (".safetensors", ".ckpt", ".pt")) or ["(no LoRA in models/loras)"],
                          {"tooltip": "A LoRA in models/loras. DiffSynth .ckpt files are read without running code."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "How strongly the LoRA applies (1.0 = as trained)."}),
        }}

    def apply(self, pipeline, lora_name, strength):
        from ..trainer.lora.apply import apply_lora

        path = comfy_env.full_path("loras", lora_name)
        if path is None:
            raise TrainerError(f"LoRA '{lora_name}' not found in models/loras: refresh the list (press R).")
        with torch.inference_mode(False):
            apply_lora(pipeline, path, strength, adapter_name=Path(lora_name).stem.replace(".", "_"))
        return (pipeline,)
