"""PIL <-> ComfyUI IMAGE ([B, H, W, C] float 0..1) and preview files for a node's UI."""

from __future__ import annotations

import uuid

import numpy as np
import torch
from PIL import Image

from . import comfy_env


def to_image_tensor(images) -> torch.Tensor:
    if isinstance(images, Image.Image):
        images = [images]
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images]
    return torch.from_numpy(np.stack(arrays))


def to_pil(image: torch.Tensor) -> list[Image.Image]:
    arr = (image.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def preview(images) -> dict:
    """Write PNGs into ComfyUI's temp folder; the returned list goes into {"ui": {"images": ...}}."""
    from ..trainer.atomic import save_image

    folder = comfy_env.temp_dir()
    out = []
    for img in images if isinstance(images, list) else [images]:
        name = f"lt_{uuid.uuid4().hex[:12]}.png"
        save_image(folder / name, img)
        out.append({"filename": name, "subfolder": "", "type": "temp"})
    return out


def grid(images: list[Image.Image], cell: int = 128, columns: int = 6) -> Image.Image:
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * cell, rows * cell), (32, 32, 32))
    for i, img in enumerate(images):
        thumb = img.copy()
        thumb.thumbnail((cell, cell))
        x, y = (i % columns) * cell, (i // columns) * cell
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    return sheet
