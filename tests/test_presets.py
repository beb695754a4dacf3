"""trainer.presets: the seeds' values, the user winning over a preset, and errors."""

import warnings

import pytest

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.presets import PRESETS, apply_preset, preset_names, split_known


def test_seed_000_values():
    anime, real, sdxl = PRESETS["anime"], PRESETS["realistic"], PRESETS["sdxl_character"]
    assert (anime["dataset_repeats"], anime["max_train_epochs"]) == (8, 20)
    assert 8 <= anime["network_dim"] <= 32 and anime["network_alpha"] == anime["network_dim"] / 2
    assert (real["dataset_repeats"], real["max_train_epochs"], real["network_dim"], real["network_alpha"]) == (15, 10, 64, 32)
    assert (sdxl["max_train_epochs"], sdxl["dataset_repeats"], sdxl["unet_lr"]) == (10, 10, 2e-4)
    assert (sdxl["network_dim"], sdxl["network_alpha"], sdxl["lr_scheduler"]) == (8, 4, "constant")


def test_seed_001_kolors_values():
    k = PRESETS["kolors"]
    assert (k["network_dim"], k["network_alpha"], k["mixed_precision"]) == (16, 4.0, "fp16")
    assert k["gradient_checkpointing"] is True and k["random_crop"] is False and k["enable_bucket"] is False
    assert (k["max_train_epochs"], k["resolution"], k["max_train_steps"]) == (1, "1024", 500)


def test_user_values_win():
    out = apply_preset("anime", {"network_dim": 32, "learning_rate": 5e-5, "unet_lr": None})
    assert out["network_dim"] == 32 and out["learning_rate"] == 5e-5
    assert out["unet_lr"] == 1e-4  # None does not count as set
    assert out["network_alpha"] == 8.0 and out["dataset_repeats"] == 8
    assert PRESETS["anime"]["network_dim"] == 16  # the preset itself is untouched
    assert apply_preset("", {"seed": 1}) == {"seed": 1}
    assert apply_preset("SDXL-Character", {})["unet_lr"] == 2e-4


def test_unknown_preset_lists_the_names():
    with pytest.raises(TrainerError, match="anime, kolors, realistic, sdxl_character"):
        apply_preset("animee", {})
    with pytest.raises(TrainerError, match="did you mean 'anime'"):
        apply_preset("animee", {})


def test_presets_build_a_valid_train_config():
    for name in preset_names():
        known, unknown = split_known(apply_preset(name, {}), TrainConfig)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            config = TrainConfig.from_dict(known).validate()
        for key, value in known.items():
            assert getattr(config, key) == value
        assert set(unknown) <= {"shuffle_caption", "text_encoder_lr", "random_crop", "enable_bucket"}
