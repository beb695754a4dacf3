"""Masked loss with kohya's names (masked_loss, alpha_mask, conditioning_data_dir): kohya's formula,
masks that follow their image through every crop, bucket, flip and cache, and what is refused."""

import dataclasses
import random
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import paint
from trainer.config import TrainConfig
from trainer.data.augment import Augment
from trainer.data.buckets import assign_bucket, make_buckets
from trainer.data.dataset import load_dataset
from trainer.data.masks import ALPHA, attach_masks, masks_for_run, read_mask_file
from trainer.errors import TrainerError
from trainer.train.noise import diffusion_loss_fn
from trainer.train.sources import LatentSource


def kohya_masked_loss(pred, target, mask_file_rgb: np.ndarray) -> torch.Tensor:
    """kohya's path for a conditioning image, written out: IMAGE_TRANSFORMS (ToTensor, Normalize
    0.5) to -1..1, the R channel, /2 + 0.5, area interpolation to the loss's size, times the
    element-wise MSE, mean over C, H, W."""
    cond = torch.from_numpy(mask_file_rgb).permute(2, 0, 1).float() / 255.0 * 2 - 1
    mask = (cond[None, 0:1] / 2 + 0.5)
    mask = torch.nn.functional.interpolate(mask, size=pred.shape[2:], mode="area")
    return ((pred - target) ** 2 * mask).mean(dim=[1, 2, 3])


def test_the_loss_is_kohyas_formula_on_a_coloured_mask_file(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # R differs from G, B and the luminance
    Image.fromarray(rgb).save(tmp_path / "m.png")
    mask = torch.from_numpy(np.asarray(read_mask_file(tmp_path / "m.png"), np.float32) / 255.0)[None, None]
    pred, target = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    ours = diffusion_loss_fn(pred, target, "l2", masks=mask)
    assert torch.allclose(ours, kohya_masked_loss(pred, target, rgb), rtol=1e-5)
    # not renormalised by the mask's area (kohya's): a half-white mask halves a uniform loss
    half = torch.zeros(1, 1, 64, 64)
    half[..., :32] = 1
    ones = torch.ones(1, 4, 8, 8)
    assert diffusion_loss_fn(ones * 2, ones, "l2", masks=half).item() == pytest.approx(0.5)


def test_masked_out_pixels_get_no_gradient():
    pred = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., :32] = 1.0  # the left half trains
    for kind in ("l2", "l1", "huber"):
        pred.grad = None
        diffusion_loss_fn(pred, target, kind, 0.1, mask).sum().backward()
        assert pred.grad[..., 4:].abs().max() == 0 and pred.grad[..., :4].abs().min() > 0


def painted(tmp_path, size=(96, 64)):
    """An image with a white box and a mask of exactly that box: wherever the box goes, the mask
    must go too."""
    box = (60, 8, 84, 40)
    data = tmp_path / "data" / "1_x"
    paint(data / "a.png", size=size, colour=(0, 0, 0), box=box, box_colour=(255, 255, 255))
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "a.webp", lossless=True)  # any image format
    return attach_masks(load_dataset(tmp_path / "data"), tmp_path / "masks")


def white(fitted) -> torch.Tensor:
    return (fitted.pixels.mean(0) > 0).float()


@pytest.mark.parametrize("how", ["centre", "random crop + flip", "bucket + flip"])
def test_the_mask_takes_its_images_crop_resize_and_flip(tmp_path, how):
    data = painted(tmp_path)
    buckets = None
    if how == "bucket + flip":
        buckets = {0: assign_bucket((96, 64), make_buckets((64, 64), 32, 128, 32), step=32)}
    augment = Augment(flip_aug=how != "centre", random_crop=how == "random crop + flip")
    source = LatentSource(None, data, 64, 64, augment=augment, rng=random.Random(1), buckets=buckets)
    seen = set()
    for _ in range(12):
        fitted = source._fit(0)
        assert fitted.mask.shape[1:] == fitted.pixels.shape[1:]
        # the resized box's edge pixels are grey in both: compare the clearly inside/outside ones
        sure = (fitted.mask[0] - 0.5).abs() > 0.4
        assert torch.equal((fitted.mask[0] > 0.5)[sure], white(fitted).bool()[sure])
        seen.add(float(fitted.mask[0, :, : fitted.mask.shape[2] // 2].sum()))
    assert (len(seen) == 1) == (how == "centre")  # flips (and crops) happened, the mask followed


def test_alpha_mask_reads_the_alpha_channel_and_an_image_without_one_trains_whole(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :16, 3] = 255  # a quarter opaque
    folder = tmp_path / "data" / "1_x"
    folder.mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    paint(folder / "b.png")
    data = masks_for_run(load_dataset(tmp_path / "data"), TrainConfig(alpha_mask=True))
    assert [item.mask for item in data.items] == [ALPHA, ALPHA]
    source = LatentSource(None, data, 64, 64)
    assert source._fit(0).mask.mean().item() == pytest.approx(0.25)
    assert source._fit(1).mask is None  # kohya: no alpha channel, no mask


def test_masked_loss_without_masks_and_conditioning_dir_without_masked_loss_are_refused(tmp_path):
    paint(tmp_path / "data" / "a.png")
    with pytest.raises(TrainerError, match="masked_loss is on but no image has a mask.*conditioning_data_dir"):
        masks_for_run(load_dataset(tmp_path / "data"), TrainConfig(masked_loss=True))
    with pytest.raises(TrainerError, match="also set masked_loss = true"):
        TrainConfig(conditioning_data_dir=str(tmp_path)).validate()
    (tmp_path / "masks").mkdir()
    Image.new("L", (32, 32), 255).save(tmp_path / "masks" / "a.png")
    with pytest.raises(TrainerError, match="a.png is 32x32, its image 64x64"):
        masks_for_run(load_dataset(tmp_path / "data"), TrainConfig(masked_loss=True, conditioning_data_dir=str(
            tmp_path / "masks")))
    Image.new("L", (64, 64), 255).save(tmp_path / "masks" / "other.png")
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(TrainerError, match="No mask in .* matches an image"):
        masks_for_run(load_dataset(tmp_path / "data"), TrainConfig(masked_loss=True, conditioning_data_dir=str(
            tmp_path / "masks")))


def test_kohya_dataset_config_reads_alpha_mask_and_conditioning_data_dir(tmp_path):
    from trainer.data.kohya_dataset_config import load_dataset_config
    from trainer.data.manifest import read_manifest, write_manifest

    for name in ("a", "b"):
        paint(tmp_path / name / "1.png")
        paint(tmp_path / name / "2.png")
    (tmp_path / "a_mask").mkdir()
    Image.new("L", (64, 64), 255).save(tmp_path / "a_mask" / "1.png")
    toml = tmp_path / "d.toml"
    toml.write_text(textwrap.dedent("""\
        [[datasets]]
        resolution = 64
          [[datasets.subsets]]
          image_dir = "a"
          conditioning_data_dir = "a_mask"
        [[datasets]]
        resolution = 64
          [[datasets.subsets]]
          image_dir = "b"
          alpha_mask = true
        """), encoding="utf-8")
    with pytest.raises(TrainerError, match="conditioning_data_dir needs masked_loss"):
        load_dataset_config(toml, TrainConfig())
    config = TrainConfig(masked_loss=True)
    data = masks_for_run(load_dataset_config(toml, config), config)
    masks = {(item.path.parent.name, item.path.name): item.mask for item in data.items}
    assert masks == {("a", "1.png"): tmp_path / "a_mask" / "1.png", ("a", "2.png"): None,
                     ("b", "1.png"): ALPHA, ("b", "2.png"): ALPHA}
    assert any("1 of 4 images have no loss mask" in n and "2.png" in n for n in data.notes)  # never silently
    back = read_manifest(write_manifest(data, tmp_path / "m.jsonl"))  # a headless run keeps them
    assert [item.mask for item in back.items] == [item.mask for item in data.items]


@pytest.mark.parametrize("disk", [False, True])
def test_cached_latents_carry_the_same_masks(tiny_models, tmp_path, disk):
    from trainer.models.loader import load_model

    data = painted(tmp_path, size=(64, 64))
    data = dataclasses.replace(data, items=data.items * 2)
    model = load_model(tiny_models("sd15"))
    live = LatentSource(model, data, 64, 64).batch([0, 1], None, "cpu")
    cached = LatentSource(model, data, 64, 64, cache=True, cache_dir=tmp_path / "cache" if disk else None)
    cached.prepare(log=lambda line: None)
    if disk:  # read back from the files
        cached = LatentSource(model, data, 64, 64, cache=True, cache_dir=tmp_path / "cache")
    batch = cached.batch([0, 1], None, "cpu")
    assert batch.masks.shape == (2, 1, 8, 8) and torch.equal(batch.masks, live.masks)
    assert 0 < batch.masks.mean() < 0.5


def test_a_run_with_masks_trains_and_says_so(tiny_models, tmp_path):
    from trainer.train.loop import Callbacks, train

    paint(tmp_path / "data" / "1_x" / "a.png")
    paint(tmp_path / "data" / "1_x" / "b.png", colour=(0, 200, 0))
    (tmp_path / "masks").mkdir()
    Image.new("L", (64, 64), 255).save(tmp_path / "masks" / "a.jpg")
    logs = []
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(tmp_path / "data"),
                         resolution="64", max_train_steps=2, network_dim=4, output_dir=str(tmp_path / "out"),
                         masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"),
                         network_train_unet_only=True)
    result = train(config, callbacks=Callbacks(log=logs.append))
    assert result.steps == 2 and all(loss == loss for loss in result.losses)
    assert any("masked loss: 1 of 2 images" in line for line in logs)
    assert any("1 of 2 images have no loss mask and train whole: b.png" in line for line in logs)
    assert "masked_loss = true" in result.lora.metadata["lt_config"]
