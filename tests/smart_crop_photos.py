"""Real photos for Smart Crop, with hand-labelled subject boxes: scikit-image's bundled pictures
(shipped in its wheel, no download), each as is and pasted off-centre onto a larger canvas of a
real texture, cropped at 512x512, 512x768 and 768x512. Used by tests/test_smart_crop_photos.py
and bench/smart_crop_photos.py (which writes docs/smart_crop.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# (left, top, right, bottom) in the photo's own pixels, labelled by eye on a 50-px grid
SUBJECTS = {
    "astronaut": (110, 15, 310, 290),  # her head, hair to the helmet ring under the chin
    "chelsea": (110, 70, 350, 280),  # the cat's face: both eyes, nose and mouth
    "coffee": (175, 15, 425, 305),  # the cup with its handle and the spoon (not the whole saucer)
    "camera": (150, 60, 330, 225),  # the cameraman's head and the camera he looks through
    "rocket": (295, 125, 345, 410),  # the rocket on its pad, nose cone to the base
    "clock": (140, 95, 270, 215),  # the (motion-blurred) clock face
    "stereo_motorcycle": (90, 95, 690, 450),  # the motorcycle, rear wheel to front wheel
}
TEXTURES = ("grass", "gravel", "brick")
TARGETS = ((512, 512), (512, 768), (768, 512))
# where a photo sits on a texture canvas of CANVAS x its size: fractions of the free space
PLACEMENTS = {"grass": (0.05, 0.9), "gravel": (0.92, 0.15), "brick": (0.85, 0.8)}
CANVAS = (2.2, 1.9)


def photo(name: str) -> Image.Image:
    from skimage import data

    arr = data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(data, name)()
    return Image.fromarray(arr).convert("RGB")


def texture_canvas(texture: str, size: tuple[int, int]) -> Image.Image:
    """``size`` canvas tiled with scikit-image's 512x512 grey texture (mirrored, no seams)."""
    from skimage import data

    tile = np.asarray(getattr(data, texture)(), dtype=np.uint8)
    tile = np.concatenate([tile, tile[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[::-1]], axis=0)
    reps = (size[1] // tile.shape[0] + 1, size[0] // tile.shape[1] + 1)
    return Image.fromarray(np.tile(tile, reps)[:size[1], :size[0]]).convert("RGB")


@dataclass(frozen=True)
class Case:
    name: str  # photo name
    setting: str  # "as is" or "on <texture>"
    image: Image.Image
    subject: tuple[int, int, int, int]  # in the image's pixels


def cases() -> list[Case]:
    """Every photo as is and on each texture (pasted off-centre)."""
    out = []
    for name, box in SUBJECTS.items():
        img = photo(name)
        out.append(Case(name, "as is", img, box))
        for texture in TEXTURES:
            size = (round(img.width * CANVAS[0]), round(img.height * CANVAS[1]))
            fx, fy = PLACEMENTS[texture]
            x, y = round(fx * (size[0] - img.width)), round(fy * (size[1] - img.height))
            canvas = texture_canvas(texture, size)
            canvas.paste(img, (x, y))
            out.append(Case(name, f"on {texture}", canvas, (box[0] + x, box[1] + y, box[2] + x, box[3] + y)))
    return out


def kept(result, subject) -> float:
    """Share of ``subject`` (image pixels) inside the crop window of ``result`` (a CropResult)."""
    l, t, r, b = result.to_output(subject)
    w, h = result.image.size
    inter = max(0, min(r, w) - max(l, 0)) * max(0, min(b, h) - max(t, 0))
    return inter / max(1, (r - l) * (b - t))


def measure(smart_crop) -> list[dict]:
    """One row per case and target: kept share with focus and with center, and focus's cue."""
    rows = []
    for case in cases():
        for target in TARGETS:
            focus = smart_crop(case.image, *target, mode="focus")
            centre = smart_crop(case.image, *target, mode="center")
            rows.append(dict(photo=case.name, setting=case.setting, target=f"{target[0]}x{target[1]}",
                             focus=kept(focus, case.subject), center=kept(centre, case.subject), cue=focus.method))
    return rows
