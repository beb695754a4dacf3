"""Stand-ins for the ComfyUI core nodes issue 17's graphs use, with ComfyUI a125cd84's class types,
INPUT_TYPES (names, order, types, defaults) and RETURN_TYPES (nodes.py, comfy_extras/nodes_train.py),
so CI can run CheckpointLoaderSimple -> LoRA Train -> LoRA Apply -> CLIPTextEncode -> KSampler ->
VAEDecode -> SaveImage on tiny single-file checkpoints. What the nodes hand each other is what
ComfyUI's do (comfy_core_detect.py, comfy_core_models.py, comfy_core_clip.py, comfy_core_patcher.py, comfy_core_lora.py,
comfy_core_sampling.py). Files: models from LT_MODELS_DIR/<kind>/, outputs to LT_OUTPUT_DIR; the CLIP
tokenizer from LT_COMFY_TOKENIZER_DIR (ComfyUI's comfy/sd1_tokenizer layout), else one written once
per process with trainer.tiny.tokenizers.write_comfyui_sd1_tokenizer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import comfy_core_lora
import comfy_core_models
import comfy_core_sampling
from comfy_standin import model_management

comfy_sd = comfy_core_lora.sd  # what comfy_env.comfy_sd is inside ComfyUI: comfy.sd
MAX_RESOLUTION = 16384
MODEL_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
_tokenizer_dir: list[Path] = []


def tokenizer_dir() -> Path:
    if os.environ.get("LT_COMFY_TOKENIZER_DIR"):
        return Path(os.environ["LT_COMFY_TOKENIZER_DIR"])
    if not _tokenizer_dir:
        from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

        _tokenizer_dir.append(write_comfyui_sd1_tokenizer(Path(tempfile.mkdtemp(prefix="comfy_")) / "sd1_tokenizer"))
    return _tokenizer_dir[0]


def models_folder(kind: str) -> Path:
    return Path(os.environ.get("LT_MODELS_DIR", "models")) / kind


def filename_list(kind: str) -> list[str]:
    """folder_paths.get_filename_list: files below the folder, '/'-separated, sorted."""
    root = models_folder(kind)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)


def full_path_or_raise(kind: str, name: str) -> Path:
    path = models_folder(kind) / name
    if not path.is_file():
        raise FileNotFoundError(f"Model in folder '{kind}' with filename '{name}' not found.")
    return path


def output_directory() -> Path:
    return Path(os.environ.get("LT_OUTPUT_DIR", "output")).resolve()


def get_save_image_path(filename_prefix: str, output_dir: Path):
    """folder_paths.get_save_image_path (without the %date% variables): folder, name, next counter."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(str(output_dir), subfolder)
    if os.path.commonpath((str(output_dir), os.path.abspath(folder))) != str(output_dir):
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
    os.makedirs(folder, exist_ok=True)
    counters = []
    for name in os.listdir(folder):
        prefix = name[:len(filename) + 1]
        if prefix[:-1].lower() == filename.lower() and prefix[-1:] == "_":
            try:
                counters.append(int(name[len(filename) + 1:].split("_")[0]))
            except ValueError:
                counters.append(0)
    return folder, filename, max(counters, default=0) + 1, subfolder, filename_prefix


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"ckpt_name": (filename_list("checkpoints"),
                                           {"tooltip": "The name of the checkpoint (model) to load."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    def load_checkpoint(self, ckpt_name):
        path = full_path_or_raise("checkpoints", ckpt_name)
        out = comfy_core_models.load_checkpoint_guess_config(path, tokenizer_dir())
        return out[:3]


class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip, text):
        if clip is None:
            raise RuntimeError("ERROR: clip input is invalid: None")
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                             "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent"

    def generate(self, width, height, batch_size=1):
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class KSampler:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {
            "model": ("MODEL",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (comfy_core_sampling.SAMPLER_NAMES,),
            "scheduler": (comfy_core_sampling.SCHEDULER_NAMES,),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        return comfy_core_sampling.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                   latent_image, denoise=denoise)


class VAEDecode:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "latent"

    def decode(self, vae, samples):
        return (vae.decode(samples["samples"]),)


class VAEEncode:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent"

    def encode(self, vae, pixels):
        return ({"samples": vae.encode(pixels[:, :, :, :3])},)


class SaveImage:
    def __init__(self):
        self.output_dir = output_directory()
        self.type = "output"
        self.prefix_append = ""

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        prefix = filename_prefix + self.prefix_append
        folder, filename, counter, subfolder, _ = get_save_image_path(prefix, self.output_dir)
        results = []
        for batch_number, image in enumerate(images):
            array = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
            file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            Image.fromarray(array).save(os.path.join(folder, file), compress_level=4)
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = (output_directory() / "temp").resolve()
        self.type = "temp"
        self.prefix_append = "_temp_preview"

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


class ImageBatch:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"
    CATEGORY = "image"

    def batch(self, image1, image2):
        if image1.shape[1:] != image2.shape[1:]:  # comfy.utils.common_upscale(..., "bilinear", "center")
            h, w = image1.shape[1:3]
            src = image2.movedim(-1, 1)
            old_aspect, new_aspect = src.shape[3] / src.shape[2], w / h
            if old_aspect > new_aspect:
                x = round((src.shape[3] - src.shape[3] * (new_aspect / old_aspect)) / 2)
                src = src.narrow(-1, x, src.shape[3] - x * 2)
            elif old_aspect < new_aspect:
                y = round((src.shape[2] - src.shape[2] * (old_aspect / new_aspect)) / 2)
                src = src.narrow(-2, y, src.shape[2] - y * 2)
            image2 = torch.nn.functional.interpolate(src, size=(h, w), mode="bilinear").movedim(1, -1)
        return (torch.cat((image1, image2), dim=0),)


class ImageStitch:
    """comfy_extras/nodes_images.py's ImageStitch (image2 beside / below image1, optional spacing)."""

    COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0),
              "blue": (0.0, 0.0, 1.0)}

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"image1": ("IMAGE",), "direction": (["right", "down", "left", "up"], {"default": "right"}),
                             "match_image_size": ("BOOLEAN", {"default": True}),
                             "spacing_width": ("INT", {"default": 0, "min": 0, "max": 1024, "step": 2}),
                             "spacing_color": (["white", "black", "red", "green", "blue"], {"default": "white"})},
                "optional": {"image2": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "stitch"
    CATEGORY = "image/transform"

    def stitch(self, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
        if image2 is None:
            return (image1,)
        batch = max(image1.shape[0], image2.shape[0])  # the shorter batch repeats its last image
        image1, image2 = (torch.cat([im, im[-1:].repeat(batch - im.shape[0], 1, 1, 1)]) for im in (image1, image2))
        horizontal = direction in ("left", "right")
        along = 1 if horizontal else 2  # the size that must agree
        if image1.shape[along] != image2.shape[along]:
            if not match_image_size:
                raise NotImplementedError("the stand-in ImageStitch pads no unequal images")
            h2, w2 = image2.shape[1:3]
            if horizontal:
                size = (image1.shape[1], int(image1.shape[1] * w2 / h2))
            else:
                size = (int(image1.shape[2] * h2 / w2), image1.shape[2])
            # ComfyUI resizes with lanczos; bilinear is the stand-in's
            image2 = torch.nn.functional.interpolate(image2.movedim(-1, 1), size=size, mode="bilinear").movedim(1, -1)
        images = [image2, image1] if direction in ("left", "up") else [image1, image2]
        if spacing_width > 0:
            width = spacing_width + spacing_width % 2
            shape = list(image1.shape)
            shape[2 if horizontal else 1] = width
            spacing = torch.zeros(shape)
            spacing[..., :3] = torch.tensor(self.COLORS[spacing_color][: shape[-1]])
            images.insert(1, spacing)
        return (torch.cat(images, dim=2 if horizontal else 1),)


class LoraLoader:
    def __init__(self):
        self.loaded_lora = None

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "lora_name": (filename_list("loras"),),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
                             "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"

    def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        path = full_path_or_raise("loras", lora_name)
        if self.loaded_lora is None or self.loaded_lora[0] != path:
            self.loaded_lora = (path, comfy_core_lora.load_torch_file(path, safe_load=True))
        return comfy_sd.load_lora_for_models(model, clip, self.loaded_lora[1], strength_model, strength_clip)


class LoraLoaderModelOnly(LoraLoader):
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"model": ("MODEL",), "lora_name": (filename_list("loras"),),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"

    def load_lora_model_only(self, model, lora_name, strength_model):
        return (self.load_lora(model, None, lora_name, strength_model, 0)[0],)


class LoraModelLoader:
    """comfy_extras/nodes_train.py's "Load LoRA Model"."""

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"model": ("MODEL",), "lora": ("LORA_MODEL",),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model"
    CATEGORY = "loaders"

    def load_lora_model(self, model, lora, strength_model):
        if strength_model == 0:
            return (model,)
        return (comfy_sd.load_lora_for_models(model, None, lora, strength_model, 0)[0],)


class SaveLoRA:
    """comfy_extras/nodes_train.py's "Save LoRA Weights" (class type SaveLoRANode)."""

    def __init__(self):
        self.output_dir = output_directory()

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"lora": ("LORA_MODEL",), "prefix": ("STRING", {"default": "loras/ComfyUI_trained_lora"})},
                "optional": {"steps": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    CATEGORY = "loaders"
    OUTPUT_NODE = True

    def save(self, lora, prefix, steps=None):
        from safetensors.torch import save_file

        folder, filename, counter, _, _ = get_save_image_path(prefix, self.output_dir)
        steps_part = "" if steps is None else f"{steps}_steps_"
        name = f"{filename}_{steps_part}{counter:05}_.safetensors"
        save_file(lora, os.path.join(folder, name))
        return {}


CORE_NODES = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "CLIPTextEncode": CLIPTextEncode,
    "EmptyLatentImage": EmptyLatentImage,
    "KSampler": KSampler,
    "VAEDecode": VAEDecode,
    "VAEEncode": VAEEncode,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "ImageBatch": ImageBatch,
    "ImageStitch": ImageStitch,
    "LoraLoader": LoraLoader,
    "LoraLoaderModelOnly": LoraLoaderModelOnly,
    "LoraModelLoader": LoraModelLoader,
    "SaveLoRANode": SaveLoRA,
}

__all__ = ["CORE_NODES", "comfy_sd", "model_management"]
