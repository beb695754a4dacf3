"""Finding the subject of a picture for Smart Crop without a model: a numpy saliency scorer
(spectral residual + colour distinctiveness) and a sharpness map (variance of the Laplacian per
tile). Faces are in face_detect.py (re-exported here). See smart_crop.py.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .face_detect import (Box, available_face_detector, detect_faces, downscaled_array,  # noqa: F401
                          face_detector_note, yunet_model_path)


# ----------------------------------------------------------------------------- saliency

def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array (edge-replicated)."""
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-x * x / (2 * sigma * sigma))
    k /= k.sum()
    h, w = a.shape
    p = np.pad(a, radius, mode="edge")
    p = sum(k[i] * p[:, i:i + w] for i in range(len(k)))
    return sum(k[i] * p[i:i + h] for i in range(len(k)))


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(a)


def saliency_map(img: Image.Image, size: int = 128) -> np.ndarray:
    """Saliency in 0..1 on a copy with the long side ``size``: the mean of spectral-residual
    saliency (computed on a 64-px copy, Hou & Zhang 2007) and colour distinctiveness (distance of
    the blurred colour from the image's mean colour, Achanta et al. 2009)."""
    arr, _ = downscaled_array(img, size)
    rgb = arr.astype(np.float64) / 255.0
    h, w = rgb.shape[:2]
    gray = rgb @ np.array([0.299, 0.587, 0.114])

    # spectral residual on a 64-px grey copy
    small = np.asarray(Image.fromarray(np.uint8(gray * 255)).resize(
        (max(8, round(w * 64 / max(w, h))), max(8, round(h * 64 / max(w, h)))), Image.Resampling.BILINEAR),
        dtype=np.float64) / 255.0
    spectrum = np.fft.fft2(small)
    log_amp = np.log(np.abs(spectrum) + 1e-9)
    phase = np.angle(spectrum)
    padded = np.pad(log_amp, 1, mode="wrap")
    mean3 = sum(padded[i:i + log_amp.shape[0], j:j + log_amp.shape[1]] for i in range(3) for j in range(3)) / 9.0
    sr = np.abs(np.fft.ifft2(np.exp(log_amp - mean3 + 1j * phase))) ** 2
    sr = _blur(sr, 2.5)
    sr = np.asarray(Image.fromarray(_normalise(sr).astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))

    # colour distinctiveness
    blurred = np.stack([_blur(rgb[:, :, c], 1.5) for c in range(3)], axis=-1)
    mean_colour = np.median(rgb.reshape(-1, 3), axis=0)  # median: the background, not the blend
    dist = np.sqrt(((blurred - mean_colour) ** 2).sum(axis=-1))
    colour = _normalise(dist)

    return _normalise(0.5 * _normalise(sr) + 0.5 * colour)


def saliency_box(img: Image.Image, size: int = 128, mass: float = 0.9) -> Box | None:
    """Box (original pixels) holding the central ``mass`` of the salient region (saliency above
    mean + one standard deviation), or None when the picture is flat or nothing stands out."""
    boxes = saliency_boxes(img, size, (mass,))
    return boxes[0] if boxes else None


def saliency_boxes(img: Image.Image, size: int = 128, masses: tuple[float, ...] = (0.9, 0.5)) -> tuple[Box, ...]:
    """``saliency_box`` for each of ``masses`` (one saliency map); () for a flat picture."""
    return content_boxes(img, size, masses, sharpness=False)[0]


def _flat(img: Image.Image) -> bool:
    arr = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    rgb_small = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    return arr.std() < 2.0 and rgb_small.std(axis=(0, 1)).max() < 2.0


def content_boxes(img: Image.Image, size: int = 128, masses: tuple[float, ...] = (0.9, 0.5),
                  sharpness: bool = True) -> tuple[tuple[Box, ...], str]:
    """(boxes holding the central ``masses`` of the subject's weight, cue), cues in turn:

    * "saliency": the saliency above its mean + one standard deviation; when that spreads over
      the frame, its squared excess over the threshold (a clear peak: a bright object on a busy
      texture) if that stays smaller;
    * "sharpness": when saliency still fills the frame, saliency times the in-focus map, if
      focus tells subject from background (``sharp_region``) and that box is clearly smaller;
    * "center": nothing localises: the boxes fill the frame (the window centres on them), or
      () for a flat picture."""
    if _flat(img):
        return (), "center"
    sal = saliency_map(img, size)
    thresh = sal.mean() + sal.std()
    boxes = _mass_boxes(np.where(sal > thresh, sal, 0.0), img.size, masses)
    if not boxes:
        return (), "center"
    if not _fills(boxes[0], img.size):
        return boxes, "saliency"
    peak = _mass_boxes(np.where(sal > thresh, sal - thresh, 0.0) ** 2, img.size, masses)
    if peak and not _fills(peak[0], img.size):
        return peak, "saliency"
    sharp = sharp_region(img, sal.shape) if sharpness else None
    if sharp is not None:
        both = sal * sharp
        found = _mass_boxes(np.where(both > both.mean() + both.std(), both, 0.0), img.size, masses)
        if found and not _fills(found[0], img.size, 0.6):  # the weakest cue: only a clearly smaller box
            return found, "sharpness"
    return boxes, "center"


def _fills(box: Box, size: tuple[int, int], share: float = 0.8) -> bool:
    return box[2] - box[0] >= share * size[0] and box[3] - box[1] >= share * size[1]


def _mass_boxes(weights: np.ndarray, size: tuple[int, int], masses: tuple[float, ...]) -> tuple[Box, ...]:
    """Boxes (pixels of a ``size`` picture) holding the central ``masses`` of ``weights``."""
    if weights.sum() <= 0:
        return ()
    h, w = weights.shape
    fx, fy = size[0] / w, size[1] / h
    boxes = []
    for mass in masses:
        tail = (1.0 - mass) / 2

        def span(marginal: np.ndarray) -> tuple[int, int]:
            cdf = np.cumsum(marginal) / marginal.sum()
            return int(np.searchsorted(cdf, tail)), int(np.searchsorted(cdf, 1.0 - tail)) + 1

        x0, x1 = span(weights.sum(axis=0))
        y0, y1 = span(weights.sum(axis=1))
        box = (max(0, int(x0 * fx)), max(0, int(y0 * fy)), min(size[0], int(np.ceil(x1 * fx))),
               min(size[1], int(np.ceil(y1 * fy))))
        if not (box[2] > box[0] and box[3] > box[1]):
            return ()
        boxes.append(box)
    return tuple(boxes)


# ----------------------------------------------------------------------------- sharpness

SHARP_TILE = 16  # px, on the copy with the long side SHARP_SIZE
SHARP_SIZE = 256


def sharpness_tiles(img: Image.Image) -> np.ndarray:
    """Variance of the Laplacian of each 16-px tile of a 256-px grey copy (the standard focus
    measure, Pech-Pacheco et al. 2000): high where the picture is in focus."""
    arr, _ = downscaled_array(img, SHARP_SIZE)
    gray = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    p = np.pad(gray, 1, mode="edge")
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * gray
    rows, cols = max(1, gray.shape[0] // SHARP_TILE), max(1, gray.shape[1] // SHARP_TILE)
    th, tw = gray.shape[0] // rows, gray.shape[1] // cols
    tiles = lap[:rows * th, :cols * tw].reshape(rows, th, cols, tw)
    return tiles.var(axis=(1, 3))


def sharp_region(img: Image.Image, shape: tuple[int, int]) -> np.ndarray | None:
    """0..1 map (``shape``) of the in-focus part when focus tells subject from background: most
    tiles are blurred (the median tile below 20 % of the sharp tiles' level, the 90th percentile)
    and the sharp ones cover at most 60 % of the picture; None otherwise (all sharp, all blurred,
    or no clear split: e.g. a photo pasted on a sharp texture)."""
    v = sharpness_tiles(img)
    if v.size < 4:
        return None
    top = float(np.percentile(v, 90))
    if top <= 1e-6 or float(np.median(v)) > 0.2 * top or float((v >= 0.3 * top).mean()) > 0.6:
        return None
    level = np.clip(np.log1p(v) / np.log1p(top), 0.0, 1.0)
    p = np.pad(level, 1, mode="edge")  # 3x3 max: a subject's edge tiles (part background) count as sharp
    level = np.max([p[i:i + level.shape[0], j:j + level.shape[1]] for i in range(3) for j in range(3)], axis=0)
    out = np.asarray(Image.fromarray(level.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR))
    return _normalise(_blur(out, max(1.0, shape[1] / 64)))
