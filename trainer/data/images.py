"""Reading images safely and fitting them to the training size.

Every image is read upright (EXIF orientation), as 8-bit RGB (palette, RGBA and LA flattened on
white; CMYK and 16-bit converted), and refused above a pixel limit before it is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import TrainerError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # ~8000x8000: bigger is almost surely a mistake and would exhaust RAM


@dataclass
class FittedImage:
    pixels: torch.Tensor  # [3, H, W] in -1..1
    original_size: tuple[int, int]  # (height, width) before resizing, for SDXL/Kolors time ids
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image


def open_rgb(path: Path) -> Image.Image:
    """Open ``path`` fully decoded, upright, 8-bit RGB; TrainerError naming the file otherwise."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise TrainerError(
                    f"{path}: {img.width}x{img.height} is over the {MAX_PIXELS // 1_000_000} MP limit; "
                    "downscale it (training uses 512-1024 px anyway).")
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except TrainerError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise TrainerError(
            f"Cannot read image {path}: {err}. The file is corrupt or truncated: re-export it or "
            "remove it from the folder.") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def fit_center(img: Image.Image, width: int, height: int) -> tuple[Image.Image, tuple[int, int]]:
    """Resize to cover width x height, keep the aspect ratio, crop the centre; return the crop's
    (top, left) in the resized image."""
    scale = max(width / img.width, height / img.height)
    new_w, new_h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return img.crop((left, top, left + width, top + height)), (top, left)


def to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_fitted(path: Path, width: int, height: int) -> FittedImage:
    img = open_rgb(path)
    original = (img.height, img.width)
    cropped, crop = fit_center(img, width, height)
    return FittedImage(to_tensor(cropped), original, crop)
