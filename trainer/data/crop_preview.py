"""What Smart Crop chose, drawn on the original picture: the kept window (thick), the subject box
it aimed at (thin) and the faces, with the cue that decided (face, saliency, sharpness, centre)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from .smart_crop import CropResult

CUES = {"face": "face", "saliency": "saliency", "sharpness": "sharpness", "center": "centre", "none": "no crop"}
WINDOW, SUBJECT, FACE = (255, 40, 40), (255, 220, 0), (40, 220, 255)


def cue_name(result: CropResult) -> str:
    """The cue that placed the window, in words for a summary."""
    return CUES.get(result.method, result.method)


def window_in_original(result: CropResult) -> tuple[float, float, float, float]:
    """The kept window (left, top, right, bottom) in the original picture's pixels."""
    h, w = result.original_size
    if result.method == "none":
        return 0.0, 0.0, float(w), float(h)
    sx, sy = result.resized_size[0] / w, result.resized_size[1] / h
    top, left = result.crop_top_left
    tw, th = result.image.size
    return left / sx, top / sy, (left + tw) / sx, (top + th) / sy


def draw_crop(original: Image.Image, result: CropResult, long_side: int = 384) -> Image.Image:
    """A copy of ``original`` (long side ``long_side``) with the window, subject and faces drawn
    and the cue written in the corner."""
    img = original.convert("RGB")
    f = long_side / max(img.size)
    img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    scaled = lambda box: [v * f for v in box]  # noqa: E731
    width = max(2, long_side // 128)
    for face in result.faces:
        draw.rectangle(scaled(face), outline=FACE, width=max(1, width // 2))
    if result.subject_box is not None:
        draw.rectangle(scaled(result.subject_box), outline=SUBJECT, width=max(1, width // 2))
    l, t, r, b = scaled(window_in_original(result))
    draw.rectangle([l, t, r - 1, b - 1], outline=WINDOW, width=width)
    label = cue_name(result)
    box = draw.textbbox((0, 0), label)
    draw.rectangle([0, 0, box[2] + 6, box[3] + 6], fill=(0, 0, 0))
    draw.text((3, 3), label, fill=(255, 255, 255))
    return img
