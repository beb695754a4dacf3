"""Dataset report on a painted dataset: counts, histogram, small images, near-duplicates, tags, steps."""

import math

import numpy as np
from PIL import Image

import trainer.data.report as report_mod
from trainer.data.dataset import add_regularization, load_dataset
from trainer.data.report import dataset_report, near_duplicates
from trainer.data.report_render import report_image, report_text


def _pattern(path, size, seed, brightness=0):
    """Smooth random pattern (8x8 noise enlarged): distinct seeds hash far apart."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    img = small.resize(size, Image.Resampling.BICUBIC)
    if brightness:
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + brightness, 0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _paint(root):
    a = root / "10_ltchar"
    _pattern(a / "a.png", (64, 64), 1)
    _pattern(a / "b.png", (80, 80), 1, brightness=12)  # near-duplicate of a: resized + brighter
    _pattern(a / "c.png", (64, 64), 2)
    _pattern(a / "small.png", (40, 48), 3)
    (a / "a.txt").write_text("ltchar, 1girl, smile", encoding="utf-8")
    (a / "b.txt").write_text("LtChar, Smile", encoding="utf-8")
    (a / "c.txt").write_bytes("\ufeffltchar, red_dress".encode("utf-8"))
    (a / "small.txt").write_text("ltchar, red dress, smile", encoding="utf-8")
    e = root / "5_extra"
    _pattern(e / "big1.png", (600, 520), 4)
    _pattern(e / "big2.png", (800, 1024), 5)
    (e / "big2.txt").write_text("  \n", encoding="utf-8")  # empty
    (e / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # unreadable image
    (e / "broken.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes())  # not text
    return root


def test_report_numbers_on_a_painted_dataset(tmp_path):
    root = _paint(tmp_path / "ds")
    r = dataset_report(root, resolution=512, epochs=3, batch_size=4)
    assert r.images == 6 and r.captioned == 4
    assert [p.name for p in r.missing_captions] == ["big1.png"]
    assert [p.name for p in r.empty_captions] == ["big2.png"]
    assert [(f.name, f.repeats, f.images, f.captioned, f.samples) for f in r.folders] == \
        [("10_ltchar", 10, 4, 4, 40), ("5_extra", 5, 2, 0, 10)]
    assert r.size_histogram == {"<512": 4, "512-767": 1, "768-1023": 1}
    assert r.orientation == {"square": 3, "portrait": 2, "landscape": 1}
    # below 512x512: enlarged by the centre-crop fit (cover): factor = max(512/w, 512/h)
    assert {p.name: f for p, _, f in r.small_images} == {"a.png": 8.0, "b.png": 6.4, "c.png": 8.0,
                                                           "small.png": 12.8}
    assert [(a.name, b.name) for a, b, _ in r.near_duplicates] == [("a.png", "b.png")]
    assert r.near_duplicates[0][2] <= r.dup_threshold
    assert r.tag_frequency[:3] == [("ltchar", 4), ("smile", 3), ("red dress", 2)] or \
        r.tag_frequency[:3] == [("ltchar", 4), ("smile", 3), ("red_dress", 2)]
    assert r.samples_per_epoch == 50
    assert r.steps_per_epoch == math.ceil(50 / 4) == 13 and r.estimated_steps == 39
    assert [p.name for p, _ in r.unreadable_images] == ["broken.png"]
    assert [p.name for p, _ in r.caption_problems] == ["broken.txt"]
    assert r.caption_problems[0][1].startswith("not text (no text encoding fits its bytes")

    text = report_text(r)
    for snippet in ("images 6, captioned 4, missing captions 1, empty captions 1", "10_ltchar: 4 images x 10",
                    "13 per epoch x 3 epochs = 39", "small.png 40x48 (x12.8)",
                    "10_ltchar/a.png ~ 10_ltchar/b.png", "ltchar: 4", "broken.png", "broken.txt"):
        assert snippet in text, snippet
    card = report_image(r)
    assert isinstance(card, Image.Image) and card.mode == "RGB" and card.width == 720 and card.height > 200
    assert len(set(card.getdata())) > 3  # something was drawn


def test_each_image_decoded_once_and_no_writes(tmp_path, monkeypatch):
    root = _paint(tmp_path / "ds")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    calls = []
    real = report_mod.open_rgb
    monkeypatch.setattr(report_mod, "open_rgb", lambda p: calls.append(p.name) or real(p))
    dataset_report(root, resolution=512)
    assert sorted(calls) == sorted(["a.png", "b.png", "c.png", "small.png", "big1.png", "big2.png", "broken.png"])
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_buckets_and_regularization_steps(tmp_path):
    root = tmp_path / "ds"
    for i, size in enumerate([(64, 64), (64, 64), (64, 128), (128, 64), (128, 64)]):
        _pattern(root / "2_x" / f"{i}.png", size, 10 + i)
    _pattern(tmp_path / "reg" / "1_person" / "r.png", (64, 64), 99)
    dataset = add_regularization(load_dataset(root), tmp_path / "reg")
    r = dataset_report(dataset, resolution=64, batch_size=2, epochs=2, enable_bucket=True,
                       min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=64)
    assert r.images == 5 and r.reg_images == 1
    assert sum(r.buckets.values()) == 5
    # 10 training samples + 10 regularization samples (kohya balances them)
    assert r.samples_per_epoch == 20
    # per bucket, rounded up: buckets split the 20 samples; never fewer steps than without buckets
    assert r.steps_per_epoch >= math.ceil(20 / 2)
    assert r.estimated_steps == 2 * r.steps_per_epoch
    plain = dataset_report(dataset, resolution=64, batch_size=2, epochs=2)
    assert plain.buckets is None and plain.steps_per_epoch == 10 and plain.estimated_steps == 20
    assert plain.small_images == []  # nothing is below 64x64


def test_near_duplicates_threshold():
    hashes = [("a", 0b0), ("b", 0b111), ("c", (1 << 64) - 1)]
    assert near_duplicates(hashes, threshold=3) == [("a", "b", 3)]
    assert near_duplicates(hashes, threshold=2) == []
    assert near_duplicates(hashes[:1]) == []
