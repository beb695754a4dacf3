"""TrainConfig: kohya names, TOML in and out, resolution rules, clear errors."""

import pytest

from trainer.config import TrainConfig
from trainer.config_files import config_from_toml
from trainer.errors import TrainerError


@pytest.mark.parametrize("text,size", [("512", (512, 512)), ("512,768", (512, 768)), ("768x512", (768, 512)),
                                       (1024, (1024, 1024))])
def test_resolution_parses_width_height(text, size):
    assert TrainConfig(resolution=text).size() == size


def test_resolution_not_multiple_of_64_names_the_nearest_sizes():
    with pytest.raises(TrainerError, match=r"500 is not a multiple of 64: use 448 or 512"):
        TrainConfig(resolution="500").size()


def test_toml_round_trip_keeps_every_value(tmp_path):
    config = TrainConfig(network_dim=32, network_alpha=16.0, resolution="512,768", gradient_checkpointing=True,
                         sample_prompts=['a "quoted" prompt --n bad', "second"], unet_lr=2e-4)
    path = tmp_path / "run.toml"
    path.write_text(config.to_toml())
    # the same run: to_dict/to_toml spell out network_train_unet_only (a kohya file without it trains the TE)
    assert config_from_toml(path).to_dict() == config.to_dict()


def test_sectioned_kohya_toml_is_flattened_and_types_coerced(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[network_arguments]\nnetwork_dim = 8.0\nnetwork_alpha = 4\n'
                    '[training]\nmax_train_epochs = "3"\ngradient_checkpointing = "true"\n')
    config = config_from_toml(path)
    assert (config.network_dim, config.network_alpha, config.max_train_epochs) == (8, 4.0, 3)
    assert config.gradient_checkpointing is True and isinstance(config.network_dim, int)


def test_unknown_key_warns_with_suggestion():
    with pytest.warns(UserWarning, match="did you mean 'network_dim'"):
        TrainConfig.from_dict({"network_dimm": 8})


def test_bad_values_are_refused_with_the_setting_named(tmp_path):
    with pytest.raises(TrainerError, match="network_dim must be at least 1"):
        TrainConfig(network_dim=0).validate()
    with pytest.raises(TrainerError, match="mixed_precision 'fp8'"):
        TrainConfig(mixed_precision="fp8").validate()
    with pytest.raises(TrainerError, match="network_dim = 'eight'"):
        TrainConfig.from_dict({"network_dim": "eight"})
    bad = tmp_path / "bad.toml"
    bad.write_text("network_dim = = 3")
    with pytest.raises(TrainerError, match="not valid TOML"):
        config_from_toml(bad)


def test_resolution_off_the_64_grid_is_an_area_for_buckets_as_in_kohya():
    # a kohya_ss preset trains at "512,650" with buckets: only the area matters there
    with pytest.warns(UserWarning, match="650 is not a multiple of 64; the buckets use 640"):
        assert TrainConfig(resolution="512,650", enable_bucket=True).size() == (512, 640)
    with pytest.raises(TrainerError, match="use 640 or 704"):
        TrainConfig(resolution="512,650").size()
