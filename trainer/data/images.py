"""Reading images safely and fitting them to the training size.

Every image is read upright (EXIF orientation), as 8-bit RGB (palette, RGBA and LA flattened on
white; CMYK and 16-bit converted), and refused above a pixel limit before it is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import TrainerError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # ~8000x8000: bigger is almost surely a mistake and would exhaust RAM


@dataclass
class FittedImage:
    pixels: torch.Tensor  # [3, H, W] in -1..1
    original_size: tuple[int, int]  # (height, width) before resizing, for SDXL/Kolors time ids
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    mask: torch.Tensor | None = None  # [1, H, W] in 0..1: the loss mask through the same geometry


class UnreadableImage(TrainerError):
    """An image file that cannot be used; ``reason`` says what is wrong with it (no file name, no
    ';': unreadable_message joins reasons with it)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"Cannot read image {path}: {reason}. Re-export it or remove it from the folder.")


# first bytes of the formats PIL reads here, to tell a damaged image from a file that is no image
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
_NOT_IMAGES = ((b"<", "HTML/XML text (a web page saved instead of the picture?)"), (b"%PDF", "a PDF document"),
               (b"PK\x03\x04", "a ZIP archive"), (b"{", "JSON text"))


def _image_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def describe_problem(path: Path, err: BaseException) -> str:
    """What is wrong with an image file PIL could not read: empty, truncated, damaged, not an image."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as read_err:
        return f"cannot be opened ({read_err.strerror or read_err})"
    if not head:
        return "empty file (0 bytes)"
    if isinstance(err, Image.DecompressionBombError):
        return f"too large ({err})"
    fmt = _image_format(head)
    text = "its header cannot be parsed" if isinstance(err, UnidentifiedImageError) else str(err)
    if fmt and "truncated" in text.lower():
        return f"truncated {fmt} file (it ends early: an interrupted copy or download)"
    if fmt:
        return f"damaged {fmt} file ({text})"
    if isinstance(err, UnidentifiedImageError):
        what = next((name for magic, name in _NOT_IMAGES if head.lstrip().startswith(magic)), None)
        return f"not an image: {what}" if what else "not an image (no picture format PIL knows starts this file)"
    return f"corrupt ({text})"


def open_rgb(path: Path) -> Image.Image:
    """Open ``path`` fully decoded, upright, 8-bit RGB; UnreadableImage (a TrainerError naming the
    file and what is wrong) otherwise."""
    return to_rgb(open_upright(path))


def open_upright(path: Path) -> Image.Image:
    """Open ``path`` fully decoded and upright, in its own mode; UnreadableImage otherwise."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise UnreadableImage(path, f"too large ({img.width}x{img.height} is over the "
                                            f"{MAX_PIXELS // 1_000_000} MP limit, downscale it: training uses "
                                            "512-1024 px anyway)")
            img.load()
            return ImageOps.exif_transpose(img)
    except TrainerError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, describe_problem(path, err)) from None


def unreadable_message(problems: list[tuple[Path, str]], root: Path | None = None) -> str:
    """One message naming every unreadable file and what is wrong with it (paths under ``root``
    relative to it)."""
    def name(path: Path) -> str:
        try:
            return str(path.relative_to(root)) if root else str(path)
        except ValueError:
            return str(path)

    listed = "; ".join(f"{name(path)}: {reason}" for path, reason in problems)
    where = f" in {root}" if root else ""
    count = f"{len(problems)} files" if len(problems) > 1 else "1 file"
    return f"{count}{where} cannot be used: {listed}. Fix or remove them, then run again."


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit or float grey image as 8-bit "L" (0..65535 or 0..255 to 0..255); others as they are."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    img = to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def cover_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """(width, height) an image of ``size`` is resized to so it covers width x height, keeping its
    aspect ratio (fit_center, augment.fit_random, and the masks that follow them)."""
    scale = max(width / size[0], height / size[1])
    return max(width, round(size[0] * scale)), max(height, round(size[1] * scale))


def fit_center(img: Image.Image, width: int, height: int) -> tuple[Image.Image, tuple[int, int]]:
    """Resize to cover width x height, keep the aspect ratio, crop the centre; return the crop's
    (top, left) in the resized image."""
    new_w, new_h = cover_size(img.size, width, height)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return img.crop((left, top, left + width, top + height)), (top, left)


def to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


