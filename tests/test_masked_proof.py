"""Masked loss, proved on a tiny model: train on an image whose left half is a motif and whose right
half is random noise, with a mask covering the left half only.

What masking must guarantee is that the masked-out pixels teach the LoRA nothing. So the same run
(same seed) is repeated on the same image with *other* noise on the right: with masks, what the
LoRA does to the right half's loss does not depend on which noise it was trained on (within
noise); without masks, the run trained on this noise predicts it clearly better than the run
trained on the other noise (it learned the noise), and the left half's loss drops a lot either way.

(The LoRA's right-half loss still moves when only the left half trains: its weights are shared by
every position, so what it learns on the left carries over; the same for either noise.)

Noise is drawn per 8x8 block: the tiny VAE (like real ones) reduces each 8x8 patch to one latent,
so finer pixel noise would average out before the UNet sees it. The tiny VAE must reconstruct
(trainer/tiny/vae_weights.py); a VAE that erases the picture leaves no noise to learn.
"""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from trainer.config import TrainConfig
from trainer.data.dataset import load_dataset
from trainer.models.loader import load_model
from trainer.train.evaluate import dataset_loss
from trainer.train.loop import train

STEPS = 30


def picture(folder, noise_seed: int):
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, :32] = (30, 60, 160)
    arr[16:48, 8:24] = (250, 210, 40)
    blocks = np.random.default_rng(noise_seed).integers(0, 256, (8, 4, 3))
    arr[:, 32:] = np.kron(blocks, np.ones((8, 8, 1)))
    sub = folder / f"{STEPS}_ltmask"
    sub.mkdir(parents=True)
    Image.fromarray(arr).save(sub / "0.png")
    (sub / "0.txt").write_text("ltmask", encoding="utf-8")
    return folder


@pytest.fixture
def setup(tmp_path, tiny_models):
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(left).save(masks / "0.png")
    Image.fromarray(left).save(masks / "left.png")
    Image.fromarray(255 - left).save(masks / "right.png")
    return tiny_models("sd15"), picture(tmp_path / "noise", 0), picture(tmp_path / "other", 100), masks


def halves(model, data, masks) -> tuple[float, float]:
    """Loss on the left and on the right half (kohya's masked loss as the measure), fixed draws."""
    def on(name):
        masked = [dataclasses.replace(item, mask=masks / f"{name}.png") for item in data.items]
        return dataset_loss(model, dataclasses.replace(data, items=masked), 64, 64, seed=123, draws=8)
    return on("left"), on("right")


def run(model_dir, data_dir, masks, masked: bool, out) -> tuple[float, float]:
    values = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data_dir), resolution="64",
                  max_train_epochs=1, train_batch_size=1, network_dim=8, network_alpha=8, conv_dim=8, conv_alpha=8,
                  learning_rate=1e-2, seed=1, output_dir=str(out), network_train_unet_only=True)
    if masked:
        values.update(masked_loss=True, conditioning_data_dir=str(masks))
    model = load_model(model_dir)
    result = train(TrainConfig(**values), model=model)
    assert result.steps == STEPS
    return halves(model, load_dataset(data_dir.parent / "noise"), masks)


def test_masked_pixels_teach_nothing_unmasked_ones_teach_the_noise(setup, tmp_path):
    model_dir, noise, other, masks = setup
    base_left, base_right = halves(load_model(model_dir), load_dataset(noise), masks)
    masked = {name: run(model_dir, data, masks, True, tmp_path / "out") for name, data in
              (("noise", noise), ("other", other))}
    plain = {name: run(model_dir, data, masks, False, tmp_path / "out") for name, data in
             (("noise", noise), ("other", other))}
    # how much better the run trained on this noise predicts it than the run trained on other noise
    learned_plain = (plain["other"][1] - plain["noise"][1]) / base_right
    learned_masked = abs(masked["other"][1] - masked["noise"][1]) / base_right
    left_drop = 1 - masked["noise"][0] / base_left
    # measured (sd15 tiny model, reconstructing VAE): learned_plain 0.074, learned_masked 0.0002,
    # left_drop 0.37 (right-half loss 0.567 -> 0.423 with masks on either noise, -> 0.337 / 0.379 without)
    assert learned_plain > 0.025, (plain, base_right)
    assert learned_masked < 0.25 * learned_plain, (masked, plain, base_right)
    assert left_drop > 0.2, (masked, base_left)
