"""Masks and several datasets in the graph: Dataset Loader's MASK input and masks folder, Smart Crop
cropping masks with their images, Dataset Report's mask coverage and warnings, Dataset Merge."""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import paint


@pytest.fixture
def dirs(tmp_path, monkeypatch, star_dataset):
    import shutil

    shutil.copytree(star_dataset, tmp_path / "input" / "stars")
    for name, path in (("LT_MODELS_DIR", tmp_path / "models"), ("LT_INPUT_DIR", tmp_path / "input"),
                       ("LT_OUTPUT_DIR", tmp_path / "output")):
        monkeypatch.setenv(name, str(path))
    return tmp_path


def node(pack, name):
    return pack.nodes.NODE_CLASS_MAPPINGS[name]()


def test_loader_takes_a_mask_batch_in_image_order(pack, dirs):
    images = torch.rand(3, 64, 48, 3)
    masks = torch.zeros(3, 64, 48)
    masks[0, :, :24] = 1.0  # half
    masks[1] = 1.0  # all
    # the third stays empty: the report will say so
    out = node(pack, "LT_DatasetLoader").load("ignored", 1, "x", ".txt", images=images, masks=masks)
    dataset = out["result"][0]
    assert all(item.mask is not None for item in dataset.items)
    first = np.asarray(Image.open(dataset.items[0].mask))
    assert first.shape == (64, 48) and first[:, :24].min() == 255 and first[:, 24:].max() == 0
    assert "3 of 3 images have a loss mask, mean coverage 50%" in out["result"][1]
    report = node(pack, "LT_DatasetReport").report(dataset, 64, 1, 1)["result"][1]
    assert "loss masks: 3 images, mean coverage 50%" in report
    assert "warning: empty mask (trains nothing):" in report and "warning: mask white everywhere" in report
    with pytest.raises(Exception, match="2 masks for 3 training images"):
        node(pack, "LT_DatasetLoader").load("ignored", 1, "x", ".txt", images=images, masks=masks[:2])


def test_loader_reads_a_masks_folder_and_the_report_names_images_without_one(pack, dirs):
    masks = dirs / "input" / "star_masks" / "10_ltdemo"
    masks.mkdir(parents=True)
    Image.new("L", (96, 96), 255).crop((0, 0, 96, 96)).save(masks / "00.png")
    half = np.zeros((96, 96), np.uint8)
    half[:, :48] = 255
    Image.fromarray(half).save(masks / "01.jpg", quality=100)
    out = node(pack, "LT_DatasetLoader").load("stars", 1, "ltdemo", ".txt", masks_folder="star_masks")
    dataset, summary = out["result"]
    assert [item.mask is not None for item in dataset.items] == [True, True, False, False]
    assert "warning: 2 of 4 images have no loss mask and train whole: 02.png, 03.png" in summary
    report = node(pack, "LT_DatasetReport").report(dataset, 64, 1, 1)["result"][1]
    assert "warning: no loss mask (trains the whole image):" in report and "02.png" in report


def test_report_reads_the_training_options_masked_loss(pack, dirs):
    dataset = node(pack, "LT_DatasetLoader").load("stars", 1, "ltdemo", ".txt")["result"][0]
    report = node(pack, "LT_DatasetReport").report(dataset, 64, 1, 1, options={"masked_loss": True})["result"][1]
    assert "warning: masked_loss is on but no image has a mask" in report


def test_smart_crop_crops_the_mask_with_its_image_and_keeps_alpha(pack, dirs):
    folder = dirs / "input" / "wide"
    paint(folder / "a.png", size=(192, 64), colour=(0, 0, 0), box=(80, 8, 112, 56), box_colour=(255, 255, 255))
    rgba = np.zeros((64, 192, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[:, 90:110, 3] = 255
    rgba[:, 90:110, :3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    masks = dirs / "input" / "wide_masks"
    mask = np.zeros((64, 192), np.uint8)
    mask[8:56, 80:112] = 255  # exactly the white box
    masks.mkdir()
    Image.fromarray(mask).save(masks / "a.png")
    loader = node(pack, "LT_DatasetLoader")
    dataset = loader.load("wide", 1, "x", ".txt", masks_folder="wide_masks")["result"][0]
    for mode in ("focus", "center", "none"):
        cropped = node(pack, "LT_SmartCrop").crop(dataset, mode, "custom", 64, 64)["result"][0]
        a, b = cropped.items
        pixels = np.asarray(Image.open(a.path).convert("L"), np.float32)
        cut = np.asarray(Image.open(a.mask), np.float32)
        sure = np.abs(cut - 127.5) > 100
        assert (pixels[sure & (cut > 127)] > 127).all() and (cut > 127).any(), mode  # the mask sits on the box
        if mode != "none":  # "none" pads the picture with white, the mask with black (no training there)
            assert ((cut > 127) == (pixels > 127))[sure].all(), mode
        assert b.mask is None and Image.open(b.path).mode == "RGBA"  # alpha_mask can still read it
    masks_mod = importlib.import_module(pack.__name__ + ".trainer.data.masks")
    config = importlib.import_module(pack.__name__ + ".trainer.config").TrainConfig(alpha_mask=True)
    cropped = node(pack, "LT_SmartCrop").crop(dataset, "center", "custom", 64, 64)["result"][0]
    ready = masks_mod.masks_for_run(cropped, config)
    alpha = masks_mod.mask_image(ready.items[1])
    assert alpha is not None and 0 < np.asarray(alpha).mean() < 255


def test_merge_node_summarises_each_dataset(pack, dirs):
    for i in range(2):
        paint(dirs / "input" / "style" / f"{i}.png", colour=(0, 90 * i, 200))
    loader = node(pack, "LT_DatasetLoader")
    char = loader.load("stars", 10, "ltdemo", ".txt")["result"][0]
    style = loader.load("style", 3, "ltstyle", ".txt")["result"][0]
    out = node(pack, "LT_DatasetMerge").merge(char, style, "[2]\nflip_aug = true\n")
    merged, summary = out["result"]
    assert summary.splitlines()[0] == "2 datasets, 6 images, 46 samples per epoch (x repeats)"
    assert "dataset 1 (stars): 10_ltdemo 4 x 10 -> 40 samples per epoch" in summary
    assert "dataset 2 (style): style 2 x 3 -> 6 samples per epoch; flip_aug = True" in summary
    assert {item.subset.class_tokens for item in merged.items} == {"ltdemo", "ltstyle"}
    report = node(pack, "LT_DatasetReport").report(merged, 64, 2, 1)["result"][1]
    assert "dataset 1 (stars): 64x64, 40 samples, batch 1 -> 40 batches per epoch" in report
    assert "46 per epoch x 2 epochs = 92" in report
