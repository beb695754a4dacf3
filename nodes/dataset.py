"""Dataset Loader: a folder of images + captions (kohya layout) into an LT_DATASET."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..trainer.errors import TrainerError
from . import comfy_env
from .images import grid, preview


def resolve_folder(folder: str) -> Path:
    path = Path(folder.strip().strip('"'))
    if not path.is_absolute():
        path = comfy_env.input_dir() / path
    if not path.is_dir():
        raise TrainerError(f"Dataset folder not found: {path}. Give a folder under ComfyUI's input/ or an absolute path.")
    return path


def folder_fingerprint(folder: Path) -> str:
    """Changes when any file below ``folder`` is added, removed, resized or touched."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def write_image_inputs(images, captions: str, caption_extension: str) -> Path:
    """IMAGE inputs + caption lines as a dataset folder under output/lora_trainer/inputs/<content hash>/."""
    from ..trainer.atomic import save_image, write_text
    from ..trainer.names import inside
    from .images import to_pil

    lines = captions.splitlines()
    digest = hashlib.sha256(images.cpu().numpy().tobytes() + captions.encode()).hexdigest()[:12]
    folder = comfy_env.output_dir() / "lora_trainer" / "inputs" / digest
    for i, img in enumerate(to_pil(images)):
        save_image(folder / f"{i:04d}.png", img)
        if i < len(lines) and lines[i].strip():
            write_text(inside(folder, f"{i:04d}{caption_extension}"), lines[i].strip())  # an extension, not a path
    return folder


class DatasetLoader:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "summary")
    FUNCTION = "load"
    OUTPUT_NODE = True
    DESCRIPTION = "Images with same-name .txt captions; kohya '10_name' subfolders give 10 repeats."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "lora_dataset", "tooltip": "Folder under ComfyUI's input/ or an "
                                  "absolute path. Subfolders named like 10_mychar repeat their images 10 times."}),
            "repeats": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "Repeats for images directly in the "
                                "folder (seed 000: anime 8, realistic 15, SDXL 10)."}),
            "trigger_word": ("STRING", {"default": "", "tooltip": "Caption for images without a caption file; put it "
                                        "first in your captions too."}),
            "caption_extension": ("STRING", {"default": ".txt", "tooltip": "Caption files beside the images."}),
        }, "optional": {
            "regularization_folder": ("STRING", {"default": "", "tooltip": "Optional class images (10-20 need no "
                                                 "captions, seed 000) that keep the model general."}),
            "images": ("IMAGE", {"tooltip": "Instead of a folder: images from other nodes (e.g. Load Image); "
                                 "the folder is then ignored."}),
            "captions": ("STRING", {"multiline": True, "default": "", "tooltip": "With images: one caption per "
                                    "line, in image order (missing lines get the trigger word)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder, regularization_folder="", images=None, **kwargs):
        parts = [folder_fingerprint(resolve_folder(folder))] if images is None else []
        if regularization_folder:
            parts.append(folder_fingerprint(resolve_folder(regularization_folder)))
        return "|".join(parts) + repr(sorted(kwargs.items()))

    def load(self, folder, repeats, trigger_word, caption_extension, regularization_folder="", images=None,
             captions=""):
        from ..trainer.data.dataset import add_regularization, load_dataset
        from ..trainer.data.images import open_rgb

        root = resolve_folder(folder) if images is None else write_image_inputs(images, captions, caption_extension)
        dataset = load_dataset(root, repeats, trigger_word, caption_extension)
        if regularization_folder:
            dataset = add_regularization(dataset, resolve_folder(regularization_folder), 1, "", caption_extension)
        lines = [f"{dataset.num_images} images, {dataset.num_train_samples} samples per epoch (x repeats)"]
        if dataset.num_reg_images:
            lines.append(f"{dataset.num_reg_images} regularization images")
        lines += dataset.notes[:10]
        thumbs = [open_rgb(item.path) for item in dataset.train_items[:24]]
        summary = "\n".join(lines)
        return {"ui": {"images": preview(grid(thumbs)), "text": [summary]}, "result": (dataset, summary)}
