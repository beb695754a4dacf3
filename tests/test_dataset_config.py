"""kohya's dataset config: [general] / [[datasets]] / [[datasets.subsets]] trains as kohya would."""

import json
import random
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from conftest import paint
from trainer.config import TrainConfig
from trainer.config_files import config_from_toml
from trainer.data.kohya_dataset_config import load_dataset_config
from trainer.errors import TrainerError
from trainer.train.api import Callbacks
from trainer.train.bucketing import assign_buckets, run_batches, steps_per_epoch

# kohya sd-scripts 48d368fa's len(DatasetGroup) (= batches per epoch) for write_example's dataset.toml,
# measured by bench/kohya_dataset_steps.py (kohya's config_util + train_util on the same folders)
KOHYA_STEPS_PER_EPOCH = 16


def write_example(root: Path) -> Path:
    """Three datasets: 64 px with buckets (a training folder + a regularization folder), 128 px with
    buckets (shuffled captions, keep_tokens 1), 64 px without buckets from kohya's fine-tuning JSON."""
    root = Path(root)
    paint(root / "a" / "1.png", (64, 64))
    paint(root / "a" / "2.png", (64, 64), colour=(0, 200, 0))
    paint(root / "a" / "3.png", (192, 64), box=(0, 0, 32, 32))
    (root / "a" / "1.txt").write_text("acat, red, tail", encoding="utf-8")
    paint(root / "reg" / "1.png", (64, 64), colour=(90, 90, 90))
    paint(root / "reg" / "2.png", (32, 128), colour=(90, 90, 90))
    paint(root / "c" / "1.png", (128, 128), colour=(0, 0, 200))
    paint(root / "c" / "2.png", (192, 64), colour=(0, 0, 200))
    paint(root / "c" / "3.png", (64, 256), colour=(0, 0, 200), box=(0, 0, 32, 32))
    for i in range(1, 4):
        (root / "c" / f"{i}.txt").write_text(f"ctok, blue, square {i}, wide, style", encoding="utf-8")
    for i in range(1, 4):
        paint(root / "ft" / f"{i}.png", (96, 64), colour=(200, 200, 40 * i))
    (root / "ft" / "meta.json").write_text(json.dumps({
        "1.png": {"caption": "a yellow card", "tags": "Yellow, card"},
        "2.png": {"caption": "another yellow card"},
        "3.png": {"tags": "yellow, plain"},
    }), encoding="utf-8")
    toml = root / "dataset.toml"
    toml.write_text(textwrap.dedent("""\
        [general]
        caption_extension = ".txt"
        shuffle_caption = false

        [[datasets]]
        resolution = 64
        batch_size = 2
        enable_bucket = true
        min_bucket_reso = 32
        max_bucket_reso = 128
        bucket_reso_steps = 32

          [[datasets.subsets]]
          image_dir = "a"
          num_repeats = 3
          class_tokens = "acat"

          [[datasets.subsets]]
          image_dir = "reg"
          is_reg = true
          class_tokens = "animal"

        [[datasets]]
        resolution = [128, 128]
        batch_size = 3
        enable_bucket = true
        min_bucket_reso = 64
        max_bucket_reso = 256

          [[datasets.subsets]]
          image_dir = "c"
          num_repeats = 2
          shuffle_caption = true
          keep_tokens = 1

        [[datasets]]
        resolution = 64
        batch_size = 2

          [[datasets.subsets]]
          metadata_file = "ft/meta.json"
          image_dir = "ft"
          num_repeats = 2
          caption_prefix = "ftstyle"
        """), encoding="utf-8")
    return toml


def tiny_config(model, toml, out, **values) -> TrainConfig:
    base = dict(pretrained_model_name_or_path=str(model), dataset_config=str(toml), resolution="64",
                network_dim=4, network_alpha=4, learning_rate=1e-3, max_train_epochs=1, output_dir=str(out),
                output_name="dc", network_train_unet_only=True)
    return TrainConfig(**{**base, **values})


def kohya_formula(dataset, buckets) -> int:
    """kohya's len(DatasetGroup): per dataset, per bucket, ceil(images x repeats / batch_size), the
    regularization images counted as the balancing repeats them."""
    counts = Counter(i for i, item in enumerate(dataset.items) if not item.is_reg for _ in range(item.repeats))
    counts.update(dataset.reg_sequence())
    per_bucket = Counter()
    for i, n in counts.items():
        part = dataset.items[i].subset.part
        per_bucket[(id(part), buckets[i].bucket if i in buckets else None, part.batch_size)] += n
    return sum(-(-n // size) for (_, _, size), n in per_bucket.items())


def test_subsets_cascade_and_steps_per_epoch_match_kohya(tmp_path):
    data = load_dataset_config(write_example(tmp_path), TrainConfig(resolution="64"))
    by = {(item.path.parent.name, item.path.name): item for item in data.items}
    a1, a2, reg2, c1, ft3 = by["a", "1.png"], by["a", "2.png"], by["reg", "2.png"], by["c", "1.png"], by["ft", "3.png"]
    assert (a1.caption, a2.caption, a1.repeats) == ("acat, red, tail", "acat", 3)  # class tokens without a file
    assert reg2.is_reg and reg2.caption == "animal" and not a1.is_reg
    assert a1.subset.part is reg2.subset.part and a1.subset.part.resolution == (64, 64)
    assert c1.subset.part.resolution == (128, 128) and c1.subset.keep_tokens == 1 and c1.subset.shuffle_caption
    assert not a1.subset.shuffle_caption  # [general] shuffle_caption = false
    assert by["ft", "1.png"].caption == "a yellow card,Yellow, card" and ft3.caption == "yellow, plain"
    assert ft3.repeats == 2 and ft3.subset.caption_prefix == "ftstyle"
    # kohya's balancing: 9 training samples in the first dataset, the 2 regularization images 5 + 4
    assert Counter(data.reg_sequence()) == Counter({data.items.index(by["reg", "1.png"]): 5,
                                                    data.items.index(reg2): 4})

    buckets = assign_buckets(data, TrainConfig())
    assert {buckets[data.items.index(by["a", "3.png"])].bucket, buckets[data.items.index(reg2)].bucket,
            buckets[data.items.index(by["c", "3.png"])].bucket} == {(96, 32), (32, 128), (64, 256)}
    assert not any(data.items[i].subset.metadata_file for i in buckets)  # the third dataset: no buckets
    steps = steps_per_epoch(data, buckets, 1)
    assert steps == kohya_formula(data, buckets) == KOHYA_STEPS_PER_EPOCH

    for epoch in range(3):  # every batch: one dataset, one size, the dataset's batch size at most
        batches = run_batches(data, buckets, 1, 7, epoch)
        assert len(batches) == steps
        for batch in batches:
            parts = {id(data.items[i].subset.part) for i in batch}
            sizes = {buckets[i].bucket if i in buckets else data.items[i].subset.part.resolution for i in batch}
            assert len(parts) == 1 and len(sizes) == 1
            assert len(batch) <= data.items[batch[0]].subset.part.batch_size
        assert Counter(i for b in batches for i in b) == Counter(
            i for i, item in enumerate(data.items) if not item.is_reg for _ in range(item.repeats)) + \
            Counter(data.reg_sequence())


def test_captions_follow_each_subset(tmp_path):
    from trainer.train.caption_options import caption_at

    data = load_dataset_config(write_example(tmp_path), TrainConfig(resolution="64", shuffle_caption=False))
    config = TrainConfig()
    rng = random.Random(0)
    by = {(item.path.parent.name, item.path.name): item for item in data.items}
    c1, a1, ft1 = by["c", "1.png"], by["a", "1.png"], by["ft", "1.png"]
    seen = {caption_at(c1, config, rng, 1, 0, 10) for _ in range(40)}
    assert len(seen) > 1 and all(s.startswith("ctok, ") for s in seen)  # shuffled, first tag kept
    assert {caption_at(a1, config, rng, 1, 0, 10) for _ in range(10)} == {"acat, red, tail"}  # not shuffled
    assert caption_at(ft1, config, rng, 1, 0, 10).startswith("ftstyle a yellow card")


def test_each_image_fits_its_datasets_size_and_augments_as_its_subset_says(tmp_path):
    from trainer.train.sources import LatentSource

    toml = write_example(tmp_path)
    toml.write_text(toml.read_text(encoding="utf-8").replace('num_repeats = 2\n  shuffle_caption',
                                                             'num_repeats = 2\n  flip_aug = true\n  shuffle_caption'),
                    encoding="utf-8")
    data = load_dataset_config(toml, TrainConfig(resolution="64"))
    c1 = next(i for i, item in enumerate(data.items) if item.path.parent.name == "c" and item.path.name == "1.png")
    ft1 = next(i for i, item in enumerate(data.items) if item.path.parent.name == "ft")
    source = LatentSource(None, data, 64, 64, rng=random.Random(0))
    assert source._fit(ft1).pixels.shape == (3, 64, 64) and source._fit(c1).pixels.shape == (3, 128, 128)
    assert source.augmenting
    variants = {source._fit(c1).pixels[:, :, :64].sum().item() for _ in range(12)}
    assert len(variants) == 2  # flipped about half the time: the subset's flip_aug
    still = LatentSource(None, data, 64, 64)  # an evaluation (no random generator) never augments
    assert len({still._fit(c1).pixels[:, :, :64].sum().item() for _ in range(6)}) == 1


def test_unknown_and_conflicting_keys_are_refused_naming_the_allowed(tmp_path):
    toml = tmp_path / "d.toml"
    paint(tmp_path / "x" / "1.png")

    def load(text):
        toml.write_text(textwrap.dedent(text), encoding="utf-8")
        return load_dataset_config(toml, TrainConfig(resolution="64"))

    with pytest.raises(TrainerError, match=r"unknown key 'num_repeat' \(did you mean 'num_repeats'\?\).*Allowed here:"
                                           r".*class_tokens.*image_dir"):
        load("""
            [[datasets]]
              [[datasets.subsets]]
              image_dir = "x"
              num_repeat = 2
            """)
    with pytest.raises(TrainerError, match=r"\[general\]: unknown key 'image_dir'.*belong to \[\[datasets.subsets\]\]"):
        load("""
            [general]
            image_dir = "x"
            """)
    with pytest.raises(TrainerError, match="cannot be mixed in one dataset"):
        load("""
            [[datasets]]
              [[datasets.subsets]]
              image_dir = "x"
              [[datasets.subsets]]
              metadata_file = "m.json"
            """)
    with pytest.raises(TrainerError, match=r"unknown key 'is_reg'.*metadata_file subsets take captions from the file"):
        load("""
            [[datasets]]
              [[datasets.subsets]]
              metadata_file = "m.json"
              is_reg = true
            """)
    with pytest.raises(TrainerError, match=r"num_repeats = '2' must be a whole number"):
        load("""
            [[datasets]]
              [[datasets.subsets]]
              image_dir = "x"
              num_repeats = "2"
            """)
    with pytest.raises(TrainerError, match=r"min_bucket_reso 256 is above the resolution's shorter side 64"):
        load("""
            [[datasets]]
            enable_bucket = true
              [[datasets.subsets]]
              image_dir = "x"
            """)
    with pytest.raises(TrainerError, match=r"No training images.*ignored \[\[datasets\]\] 1 subset 1 \(nope\): "
                                           r"image_dir is not a folder"):
        load("""
            [[datasets]]
              [[datasets.subsets]]
              image_dir = "nope"
            """)
    # what kohya accepts but does nothing here: a note, not a refusal
    data = load("""
        [[datasets]]
        network_multiplier = 0.5
          [[datasets.subsets]]
          image_dir = "x"
          face_crop_aug_range = [0.3, 0.7]
        """)
    assert any("network_multiplier" in n for n in data.notes) and any("face crop" in n for n in data.notes)


def test_dataset_config_path_is_relative_to_the_training_config(tmp_path, monkeypatch):
    write_example(tmp_path / "proj")
    (tmp_path / "proj" / "train.toml").write_text("dataset_config = \"dataset.toml\"\nnetwork_train_unet_only = true\n",
                                                encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = config_from_toml(tmp_path / "proj" / "train.toml")
    assert Path(config.dataset_config) == tmp_path / "proj" / "dataset.toml"


TRAIN_TOML = """\
[general]
caption_extension = ".txt"

[[datasets]]
resolution = 64
batch_size = 3
  [[datasets.subsets]]
  image_dir = "a"
  class_tokens = "acat"
  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true

[[datasets]]
resolution = 128
batch_size = 3
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 256
  [[datasets.subsets]]
  image_dir = "c"
  keep_tokens = 1
  shuffle_caption = SHUFFLE

[[datasets]]
resolution = 64
batch_size = 3
  [[datasets.subsets]]
  metadata_file = "ft/meta.json"
  image_dir = "ft"
"""


@pytest.mark.parametrize("cache", [False, True])
def test_two_resolutions_train_in_one_run(tiny_models, tmp_path, cache):
    """A batch of two sizes could not be stacked: the run training at all shows each batch has one."""
    from trainer.data.manifest import read_manifest, write_manifest
    from trainer.train.loop import total_steps, train

    write_example(tmp_path / "data")
    toml = tmp_path / "data" / "small.toml"  # kohya refuses shuffled captions with a text cache: so do we
    toml.write_text(TRAIN_TOML.replace("SHUFFLE", "false" if cache else "true"), encoding="utf-8")
    config = tiny_config(tiny_models("sdxl"), toml, tmp_path / "out", cache_latents=cache,
                         cache_latents_to_disk=cache, cache_text_encoder_outputs=cache)
    data = load_dataset_config(toml, config)
    # kohya's count: 64 px 3 + 3 balanced regularization samples / 3 = 2, 128 px three buckets of 1 = 3,
    # fine-tuning 3 / 3 = 1
    assert total_steps(config, data, assign_buckets(data, config)) == 6
    logs = []
    result = train(config, callbacks=Callbacks(log=logs.append))
    assert result.steps == 6 and all(loss == loss for loss in result.losses)
    assert any(line.startswith("[[datasets]] 2: 128x128, 3 buckets, 3 samples, batch 3 -> 3 batches")
               for line in logs)
    meta = result.lora.metadata
    datasets = json.loads(meta["ss_datasets"])
    assert [d["resolution"] for d in datasets] == [[64, 64], [128, 128], [64, 64]]
    assert [(d["num_train_images"], d["num_reg_images"]) for d in datasets] == [(3, 2), (3, 0), (3, 0)]
    assert json.loads(meta["ss_dataset_dirs"]) == {"a": {"n_repeats": 1, "img_count": 3},
                                                   "c": {"n_repeats": 1, "img_count": 3},
                                                   "meta.json": {"n_repeats": 1, "img_count": 3}}
    assert json.loads(meta["ss_tag_frequency"])["meta.json"] == {"yellow": 2, "card": 1, "plain": 1}
    if cache:
        assert result.encoder_calls["vae"] == 11  # each image once, at its own dataset's size
    # the data model survives the manifest (a headless run of a graph's merged datasets)
    back = read_manifest(write_manifest(data, tmp_path / "m.jsonl"))
    assert total_steps(config, back, assign_buckets(back, config)) == 6
    assert [(i.subset.part.resolution, i.subset.keep_tokens, i.is_reg) for i in back.items] == \
        [(i.subset.part.resolution, i.subset.keep_tokens, i.is_reg) for i in data.items]
