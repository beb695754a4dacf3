"""A graph's training, moved to the CLI: the dataset manifest and the command LoRA Train shows."""

import json

import pytest

from trainer.data.dataset import load_dataset
from trainer.data.manifest import read_manifest, write_manifest
from trainer.errors import TrainerError


def test_manifest_keeps_what_the_graph_changed(star_dataset, tmp_path):
    dataset = load_dataset(star_dataset, 1, "ltdemo")
    dataset.items[0].caption = "ltstar, edited in memory, ünïcode"
    dataset.items[1].source_size, dataset.items[1].source_crop = (96, 128), (16, 0)
    dataset.items[2].is_reg = True
    back = read_manifest(write_manifest(dataset, tmp_path / "run" / "d.jsonl"))
    assert back.items == dataset.items
    assert back.num_train_samples == dataset.num_train_samples and back.num_reg_images == 1


def test_manifest_names_missing_images_and_bad_lines(star_dataset, tmp_path):
    path = write_manifest(load_dataset(star_dataset), tmp_path / "d.jsonl")
    next(star_dataset.rglob("*.png")).unlink()
    with pytest.raises(TrainerError, match="1 images listed in .* are missing"):
        read_manifest(path)
    path.write_text(json.dumps({"caption": "no path"}) + "\n")
    with pytest.raises(TrainerError, match="line 1 is not a dataset entry"):
        read_manifest(path)
