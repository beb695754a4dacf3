"""trainer.data.buckets: kohya's bucket set, where images go, how they are cropped, batch purity."""

import json
import random

import pytest
from PIL import Image

from trainer.data.buckets import apply_bucket, assign_bucket, bucket_batches, bucket_info, make_buckets
from trainer.errors import TrainerError

SDXL = make_buckets((1024, 1024), min_size=256, max_size=2048, step=64)


def test_bucket_set_matches_kohya():
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024 for w, h in SDXL)
    assert all(256 <= w <= 2048 and 256 <= h <= 2048 for w, h in SDXL)
    for reso in [(1024, 1024), (1088, 960), (1152, 896), (1216, 832), (1344, 768), (1536, 640), (768, 1344)]:
        assert reso in SDXL  # the well-known kohya SDXL buckets
    assert SDXL == sorted(SDXL) and len(SDXL) == len(set(SDXL))
    small = make_buckets((512, 512), 256, 1024, 64)
    assert (512, 512) in small and (1024, 256) in small and max(w * h for w, h in small) <= 512 * 512


def test_bucket_parameter_errors():
    with pytest.raises(TrainerError, match="multiple of bucket_reso_steps"):
        make_buckets((1024, 1024), 250, 2048, 64)
    with pytest.raises(TrainerError, match="max_bucket_reso"):
        make_buckets((1024, 1024), 256, 512, 64)


def test_wide_image_goes_to_a_wide_bucket_and_keeps_its_width():
    choice = assign_bucket((2000, 1000), SDXL)
    w, h = choice.bucket
    assert w / h == pytest.approx(2.0, abs=0.1) and w > h
    assert choice.resized_size[1] == h  # heights matched, width overflow cropped
    crop_w, crop_h = choice.crop_size
    assert 0 <= crop_w < 64 and crop_h == 0
    assert choice.crop_top_left == (0, crop_w // 2)


@pytest.mark.parametrize("size", [(3000, 2000), (1000, 1500), (640, 1920), (4096, 1024), (777, 555), (1024, 1024)])
def test_crop_is_always_less_than_one_step(size):
    choice = assign_bucket(size, SDXL)
    assert choice.bucket in SDXL
    assert all(0 <= c < 64 for c in choice.crop_size)
    assert choice.resized_size[0] >= choice.bucket[0] and choice.resized_size[1] >= choice.bucket[1]
    assert abs(choice.ar_error) < 0.1


def test_small_images_are_upscaled_unless_no_upscale():
    up = assign_bucket((300, 200), SDXL)
    assert up.resized_size[0] > 300  # default: scaled up to a full-area bucket
    keep = assign_bucket((300, 200), SDXL, no_upscale=True)
    assert keep.resized_size == (300, 200) and keep.bucket == (256, 192)
    for size in [(300, 200), (700, 1000), (1000, 1000), (129, 4000)]:
        c = assign_bucket(size, SDXL, no_upscale=True)
        assert c.resized_size[0] <= size[0] and c.resized_size[1] <= size[1]
        assert c.bucket[0] % 64 == 0 and c.bucket[1] % 64 == 0
    big = assign_bucket((4000, 3000), SDXL, no_upscale=True, max_area=1024 * 1024)
    assert big.bucket[0] * big.bucket[1] <= 1024 * 1024 and big.resized_size[0] < 4000
    with pytest.raises(TrainerError, match="bucket_no_upscale"):
        assign_bucket((40, 40), SDXL, no_upscale=True)


def test_apply_bucket_produces_the_bucket_size():
    img = Image.new("RGB", (2000, 1000), "red")
    choice = assign_bucket(img.size, SDXL)
    assert apply_bucket(img, choice).size == choice.bucket


def test_batches_never_mix_buckets_and_cover_every_sample():
    rng = random.Random(0)
    sizes = [(rng.randint(400, 3000), rng.randint(400, 3000)) for _ in range(60)]
    pairs = [(i, assign_bucket(s, SDXL).bucket) for i, s in enumerate(sizes) for _ in range(3)]  # 3 repeats
    batches = bucket_batches(pairs, 4, random.Random(1))
    bucket_of = dict(pairs)
    assert all(all(bucket_of[k] == bucket for k in keys) and 1 <= len(keys) <= 4 for bucket, keys in batches)
    assert sorted(k for _, keys in batches for k in keys) == sorted(k for k, _ in pairs)
    assert len({b for b, _ in batches}) > 3  # really several buckets in play
    # the batch order is shuffled across buckets and reproducible from the rng
    assert [b for b, _ in batches] != sorted(b for b, _ in batches)
    assert batches == bucket_batches(pairs, 4, random.Random(1))
    assert batches != bucket_batches(pairs, 4, random.Random(2))


def test_bucket_info_is_kohya_metadata():
    choices = [assign_bucket(s, SDXL) for s in [(2000, 1000), (2000, 1000), (1000, 1000)]]
    info = json.loads(bucket_info(choices, repeats=[10, 10, 5]))
    counts = {tuple(b["resolution"]): b["count"] for b in info["buckets"].values()}
    assert counts[(1024, 1024)] == 5 and sum(counts.values()) == 25
    assert info["mean_img_ar_error"] >= 0
