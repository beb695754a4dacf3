"""It learns: on tiny SDXL and Kolors models, training lowers the loss on the training set (same
noise and timesteps before and after), and images sampled with the LoRA land closer to the
training images' latents than without it (same seed).

Thresholds were measured on this project's tiny models (see the notes in each test) and leave
a wide margin. The tiny models have random weights, so a LoRA on attention alone can only bend
them a little; with conv LoRA (kohya's LoCon, conv_dim) the whole UNet path adapts and the
effect is large.
"""

import numpy as np
import pytest

from trainer.config import TrainConfig
from trainer.data.dataset import load_dataset
from trainer.models.loader import load_model
from trainer.sample import generate
from trainer.train.evaluate import dataset_latents, dataset_loss
from trainer.train.loop import train

PROMPT = "ltdemo, a yellow star, blue background"


def run(family, model_dir, data_dir, **overrides):
    values = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data_dir), resolution="64",
                  max_train_epochs=4, train_batch_size=2, network_dim=8, network_alpha=8, seed=1)
    config = TrainConfig(**{**values, **overrides})
    data = load_dataset(data_dir)
    model = load_model(model_dir)
    before = dataset_loss(model, data, 64, 64, seed=123)
    result = train(config, model=model, dataset=data)
    after = dataset_loss(model, data, 64, 64, seed=123)
    return model, data, result, before, after


def sampled_distance(model, targets, strength, seeds=range(4)):
    """Mean over seeds of the MSE between a sampled latent and its nearest training latent."""
    dists = []
    for seed in seeds:
        latent = generate(model, PROMPT, steps=20, cfg=1.0, width=64, height=64, seed=seed, sampler="euler",
                          lora_strength=strength, output_type="latent")[0]
        dists.append(min(float(((latent - t) ** 2).mean()) for t in targets))
    return float(np.mean(dists))


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_conv_lora_learns_the_training_set(tiny_models, star_dataset, family):
    # measured: loss 1.117 -> 0.344 (sdxl), 1.112 -> 0.359 (kolors); distance ratio 0.315 / 0.294
    # (mean squared distance to the nearest training latent: 42.5 vs 135.0, 131.1 vs 446.1)
    model, data, result, before, after = run(family, tiny_models(family), star_dataset,
                                             learning_rate=3e-3, conv_dim=8, conv_alpha=8)
    assert result.steps == 80  # 4 images x 10 repeats x 4 epochs / batch 2
    assert after < 0.5 * before, (before, after)
    targets = dataset_latents(model, data, 64, 64)
    with_lora, without = sampled_distance(model, targets, 1.0), sampled_distance(model, targets, 0.0)
    assert with_lora < 0.6 * without, (with_lora, without)


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_attention_lora_lowers_the_loss(tiny_models, star_dataset, family):
    # measured: loss ratio 0.889 (sdxl), 0.897 (kolors) after 80 steps at lr 1e-2
    _, _, _, before, after = run(family, tiny_models(family), star_dataset, learning_rate=1e-2)
    assert after < 0.95 * before, (before, after)


def test_same_seed_same_lora(tiny_models, star_dataset):
    a = run("sd15", tiny_models("sd15"), star_dataset, max_train_steps=5, learning_rate=1e-3)[2]
    b = run("sd15", tiny_models("sd15"), star_dataset, max_train_steps=5, learning_rate=1e-3)[2]
    assert a.losses == b.losses
    assert all((a.lora.tensors[k] == b.lora.tensors[k]).all() for k in a.lora.tensors)
