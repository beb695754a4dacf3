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


def write_mask_inputs(masks, dataset):
    """A MASK batch ([B, H, W], 1 = train) as mask files under output/lora_trainer/inputs/masks_<hash>/,
    one per training image in order (or one for all), each at its image's size."""
    import dataclasses

    from PIL import Image

    from ..trainer.atomic import save_image
    from ..trainer.data.images import open_rgb

    masks = masks[None] if masks.ndim == 2 else masks
    train = [i for i, item in enumerate(dataset.items) if not item.is_reg]
    if len(masks) not in (1, len(train)):
        raise TrainerError(f"Dataset Loader: {len(masks)} masks for {len(train)} training images: give one mask per "
                           "image (in the images' order) or a single mask for all.")
    arr = (masks.detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype("uint8")
    digest = hashlib.sha256(arr.tobytes() + repr(arr.shape).encode()).hexdigest()[:12]
    folder = comfy_env.output_dir() / "lora_trainer" / "inputs" / f"masks_{digest}"
    items, resized = list(dataset.items), 0
    for k, i in enumerate(train):
        mask = Image.fromarray(arr[k if len(arr) > 1 else 0], "L")
        size = tuple(items[i].size) if items[i].size != (0, 0) else open_rgb(items[i].path).size
        if mask.size != size:  # e.g. a mask made at another resolution: stretched onto its image
            mask, resized = mask.resize(size, Image.Resampling.BILINEAR), resized + 1
        path = save_image(folder / f"{k:04d}_{Path(items[i].path).stem}.png", mask)
        items[i] = dataclasses.replace(items[i], mask=path)
    notes = dataset.notes + ([f"{resized} masks had another size than their image and were resized to it"]
                             if resized else [])
    return dataclasses.replace(dataset, items=items, notes=notes)


def mask_lines(dataset) -> list[str]:
    """The summary's mask line: how many training images have one, their mean coverage."""
    from ..trainer.data.masks import coverage, mask_image, unmasked_note

    train = [item for item in dataset.items if not item.is_reg]
    masked = [item for item in train if item.mask is not None]
    if not masked:
        return []
    shares = [coverage(mask_image(item)) for item in masked]
    note = unmasked_note(dataset)
    return [f"masked training: {len(masked)} of {len(train)} images have a loss mask, mean coverage "
            f"{100 * sum(shares) / len(shares):.0f}%"] + ([f"warning: {note}"] if note else [])


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
            "masks": ("MASK", {"tooltip": "Loss masks (masked training: white = train, black = ignored), e.g. from "
                               "SAM or the mask editor: one per training image in order (with images: the same "
                               "order), or one for all."}),
            "masks_folder": ("STRING", {"default": "", "tooltip": "Or a folder of masks named like the images (any "
                                        "image format, white = train): kohya's conditioning_data_dir."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder, regularization_folder="", images=None, masks=None, masks_folder="", **kwargs):
        parts = [folder_fingerprint(resolve_folder(folder))] if images is None else []
        for extra in (regularization_folder, masks_folder):
            if extra:
                parts.append(folder_fingerprint(resolve_folder(extra)))
        return "|".join(parts) + repr(sorted(kwargs.items()))

    def load(self, folder, repeats, trigger_word, caption_extension, regularization_folder="", images=None,
             captions="", masks=None, masks_folder=""):
        from ..trainer.data.dataset import add_regularization, load_dataset
        from ..trainer.data.images import open_rgb

        root = resolve_folder(folder) if images is None else write_image_inputs(images, captions, caption_extension)
        dataset = load_dataset(root, repeats, trigger_word, caption_extension)
        if regularization_folder:
            dataset = add_regularization(dataset, resolve_folder(regularization_folder), 1, "", caption_extension)
        if masks is not None and masks_folder.strip():
            raise TrainerError("Dataset Loader: connect masks or give a masks_folder, not both.")
        if masks is not None:
            dataset = write_mask_inputs(masks, dataset)
        elif masks_folder.strip():
            from ..trainer.data.masks import attach_masks

            dataset = attach_masks(dataset, resolve_folder(masks_folder), only=lambda item: not item.is_reg)
        lines = [f"{dataset.num_images} images, {dataset.num_train_samples} samples per epoch (x repeats)"]
        lines += mask_lines(dataset)
        if dataset.num_reg_images:
            lines.append(f"{dataset.num_reg_images} regularization images")
        lines += dataset.notes[:10]
        thumbs = [open_rgb(item.path) for item in dataset.train_items[:24]]
        summary = "\n".join(lines)
        return {"ui": {"images": preview(grid(thumbs)), "text": [summary]}, "result": (dataset, summary)}
