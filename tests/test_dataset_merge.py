"""Dataset Merge: several datasets in one run, each with its own repeats, class tokens, caption
settings, resolution / buckets and regularization flag, in the same data model as kohya's
dataset_config (so the same steps, balancing and metadata as the equivalent dataset TOML)."""

import json
import random

import pytest

from conftest import paint
from trainer.config import TrainConfig
from trainer.data.dataset import add_regularization, load_dataset
from trainer.data.kohya_dataset_config import load_dataset_config
from trainer.data.merge import merge_datasets, parse_merge_settings, resolve_parts
from trainer.errors import TrainerError
from trainer.train.bucketing import assign_buckets, part_lines, steps_per_epoch

SETTINGS = """\
batch_size = 2
[2]
resolution = 128
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 256
keep_tokens = 1
shuffle_caption = true
"""

# the same two datasets as kohya's dataset config
TOML = """\
[general]
caption_extension = ".txt"
batch_size = 2
[[datasets]]
resolution = 64
  [[datasets.subsets]]
  image_dir = "char/4_mychar"
  num_repeats = 4
  class_tokens = "mychar"
  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
[[datasets]]
resolution = 128
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 256
  [[datasets.subsets]]
  image_dir = "style"
  num_repeats = 2
  class_tokens = "ltstyle"
  keep_tokens = 1
  shuffle_caption = true
"""


def make(root):
    paint(root / "char" / "4_mychar" / "1.png")
    paint(root / "char" / "4_mychar" / "2.png", colour=(0, 200, 0))
    (root / "char" / "4_mychar" / "1.txt").write_text("mychar, red", encoding="utf-8")
    paint(root / "reg" / "1.png", colour=(90, 90, 90))
    for i, size in enumerate([(128, 128), (192, 128), (128, 256)]):
        paint(root / "style" / f"{i}.png", size=size, colour=(0, 0, 200))
        (root / "style" / f"{i}.txt").write_text(f"ltstyle, blue, flat {i}", encoding="utf-8")
    char = add_regularization(load_dataset(root / "char"), root / "reg")
    style = load_dataset(root / "style", repeats=2, trigger_word="ltstyle")
    general, own = parse_merge_settings(SETTINGS, 2)
    return merge_datasets([char, style], own, general)


def test_a_merge_is_the_dataset_config_it_stands_for(tmp_path):
    merged = make(tmp_path)
    config = TrainConfig(resolution="64", train_batch_size=1)
    ours = resolve_parts(merged, config)
    kohya = load_dataset_config(_toml(tmp_path), config)
    key = lambda item: (item.path.parent.name, item.path.name)  # noqa: E731
    assert sorted(map(key, ours.items)) == sorted(map(key, kohya.items))
    for a in ours.items:
        b = next(item for item in kohya.items if key(item) == key(a))
        assert (a.repeats, a.is_reg, a.caption) == (b.repeats, b.is_reg, b.caption)
        for name in ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso"):
            assert getattr(a.subset.part, name) == getattr(b.subset.part, name), name
        for name in ("keep_tokens", "shuffle_caption", "num_repeats", "class_tokens", "is_reg", "img_count"):
            assert getattr(a.subset, name) == getattr(b.subset, name), (name, key(a))
    ours_buckets, kohya_buckets = assign_buckets(ours, config), assign_buckets(kohya, config)
    # 2 images x 4 + 8 balanced regularization samples / 2; 6 samples in 2 buckets / 2: 3
    assert steps_per_epoch(ours, ours_buckets, 1) == steps_per_epoch(kohya, kohya_buckets, 1) == 8 + 3
    assert part_lines(ours, ours_buckets)[0].startswith("dataset 1 (char): 64x64, 8 samples + 8 regularization")
    assert part_lines(ours, ours_buckets)[1].startswith(
        "dataset 2 (style): 128x128, 2 buckets, 6 samples, batch 2 -> 3 batches")
    # unset keys follow the run: another resolution moves the first dataset only
    other = resolve_parts(merged, TrainConfig(resolution="128"))
    assert {item.subset.part.resolution for item in other.items} == {(128, 128)}
    assert merged.items[0].subset.part.resolution == (0, 0)  # the graph's dataset is left as it was


def _toml(root):
    path = root / "d.toml"
    path.write_text(TOML, encoding="utf-8")
    return path


def test_each_dataset_keeps_its_caption_settings(tmp_path):
    from trainer.train.caption_options import caption_at

    data = resolve_parts(make(tmp_path), TrainConfig(resolution="64"))
    style = next(item for item in data.items if item.path.parent.name == "style")
    char = next(item for item in data.items if item.path.name == "1.png" and item.path.parent.name == "4_mychar")
    rng = random.Random(0)
    shuffled = {caption_at(style, TrainConfig(), rng, 1, 0, 10) for _ in range(30)}
    assert len(shuffled) > 1 and all(c.startswith("ltstyle, ") for c in shuffled)  # keep_tokens 1
    assert {caption_at(char, TrainConfig(), rng, 1, 0, 10) for _ in range(10)} == {"mychar, red"}


def test_settings_are_checked_with_kohyas_schema():
    with pytest.raises(TrainerError, match=r"unknown key 'keep_token' \(did you mean 'keep_tokens'\?\)"):
        parse_merge_settings("[1]\nkeep_token = 1\n", 2)
    with pytest.raises(TrainerError, match=r"section \[3\] names no connected dataset: use \[1\] to \[2\]"):
        parse_merge_settings("[3]\nresolution = 512\n", 2)
    with pytest.raises(TrainerError, match="unknown key 'num_repeats'.*Dataset Loader's repeats widget"):
        parse_merge_settings("num_repeats = 3\n", 2)
    with pytest.raises(TrainerError, match="resolution = 'big' must be a size"):
        parse_merge_settings("[2]\nresolution = 'big'\n", 2)


def test_a_merged_run_counts_and_records_each_dataset(tiny_models, tmp_path):
    from trainer.data.manifest import read_manifest, write_manifest
    from trainer.train.loop import Callbacks, train

    merged = make(tmp_path)
    logs = []
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), resolution="64",
                         max_train_epochs=1, network_dim=4, output_dir=str(tmp_path / "out"),
                         network_train_unet_only=True)
    # the headless run reads the graph's merge back from the manifest and resolves it the same way
    back = read_manifest(write_manifest(merged, tmp_path / "m.jsonl"))
    result = train(config, dataset=back, callbacks=Callbacks(log=logs.append))
    assert result.steps == 11
    assert any(line.startswith("dataset 2 (style): 128x128, 2 buckets, 6 samples, batch 2 -> 3 batches")
               for line in logs)
    meta = result.lora.metadata
    assert json.loads(meta["ss_dataset_dirs"]) == {"4_mychar": {"n_repeats": 4, "img_count": 2},
                                                   "style": {"n_repeats": 2, "img_count": 3}}
    tags = json.loads(meta["ss_tag_frequency"])
    assert tags["style"] == {"ltstyle": 3, "blue": 3, "flat 0": 1, "flat 1": 1, "flat 2": 1}
    assert tags["4_mychar"] == {"mychar": 2, "red": 1}
    datasets = json.loads(meta["ss_datasets"])
    assert [(d["resolution"], d["batch_size_per_device"], d["enable_bucket"]) for d in datasets] == \
        [([64, 64], 2, False), ([128, 128], 2, True)]


def test_the_report_counts_each_dataset(tmp_path):
    from trainer.data.report import dataset_report
    from trainer.data.report_render import report_text

    report = dataset_report(make(tmp_path), 64, epochs=2, batch_size=1)
    assert report.steps_per_epoch == 11 and report.estimated_steps == 22
    text = report_text(report)
    assert "datasets (each at its own settings):" in text and "dataset 2 (style): 128x128, 2 buckets" in text
