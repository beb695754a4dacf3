"""Text-to-image for every family and sampler: finite, repeatable with a seed, sized as asked."""

import pytest
import torch

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
    with pytest.raises(TrainerError, match="Unknown sampler 'heun'"):
        generate(sdxl, "x", sampler="heun")
    with pytest.raises(TrainerError, match="multiples of 8"):
        generate(sdxl, "x", width=65, height=64)
