"""Text-to-image for every family and sampler: finite, repeatable with a seed, sized as asked."""

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.errors import TrainerError
from trainer.models.loader import load_model
from trainer.sample import SAMPLERS, generate


@pytest.fixture(scope="module")
def sdxl(tiny_models):
    return load_model(tiny_models("sdxl"))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_is_finite_and_repeatable(sdxl, sampler):
    args = dict(prompt="a red circle", negative_prompt="blurry", seed=11, steps=4, cfg=5.0, width=64, height=64,
                sampler=sampler, output_type="latent")
    a, b = generate(sdxl, **args), generate(sdxl, **args)
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert not torch.equal(a, generate(sdxl, **dict(args, seed=12)))


def test_samplers_differ_and_size_is_respected(sdxl):
    args = dict(prompt="x", seed=1, steps=4, width=128, height=64, output_type="latent")
    euler, ddim = generate(sdxl, sampler="euler", **args), generate(sdxl, sampler="ddim", **args)
    assert euler.shape == (1, 4, 8, 16) and not torch.allclose(euler, ddim)
    image = generate(sdxl, "x", seed=1, steps=2, width=128, height=64)
    assert image.size == (128, 64)


@pytest.mark.parametrize("family", ["sd15", "kolors"])
def test_other_families_generate_pictures(tiny_models, family):
    image = generate(load_model(tiny_models(family)), "ltdemo", seed=0, steps=3, width=64, height=64)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_bad_sampler_and_size(sdxl):
    with pytest.raises(TrainerError, match="Unknown sampler 'magic'. Use one of: .*euler_a"):
        generate(sdxl, "x", sampler="magic")
    with pytest.raises(TrainerError, match="multiples of 8"):
        generate(sdxl, "x", width=65, height=64)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_every_model_dtype_decodes_through_the_fp32_vae(tiny_models, family, dtype):
    """The loader offers fp32/fp16/bf16 models with an fp32 VAE: latents must reach it in its dtype."""
    model = load_model(tiny_models(family), dtype=dtype)
    image = generate(model, "ltdemo", seed=0, steps=2, cfg=3.0, width=64, height=64, output_type="np")
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


# every family after a bf16 run; fp16 (bf16 on a CPU) and no mixed precision once; the model dtypes
# themselves are covered above
@pytest.mark.parametrize("family,mixed_precision", [("sd15", "bf16"), ("sdxl", "bf16"), ("kolors", "bf16"),
                                                    ("sdxl", "fp16"), ("sd15", "no")])
def test_samples_during_and_after_training_in_every_precision(tiny_models, star_dataset, tmp_path, family,
                                                              mixed_precision):
    from trainer.config import TrainConfig
    from trainer.train.loop import train

    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models(family)), train_data_dir=str(star_dataset),
                         output_dir=str(tmp_path), output_name="p", resolution="64", network_dim=4,
                         train_batch_size=4, max_train_steps=2, mixed_precision=mixed_precision,
                         sample_prompts=["ltdemo --d 1 --s 2 --w 64 --h 64"], sample_every_n_steps=2)
    result = train(config)
    during = result.files["sample_00_s000002"]
    assert Image.open(during).size == (64, 64)
    after = generate(result.model, "ltdemo", seed=0, steps=2, width=64, height=64, output_type="np")
    assert np.isfinite(after).all()
