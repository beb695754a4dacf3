"""Published kohya configs (tests/data/kohya_configs, sources in SOURCES.md) run on tiny models
with only paths (model, data, output, sample prompts), length (1 step) and size (64 px, batch 1)
changed, the way `python -m trainer train --config FILE --set ...` changes them. Each trains, or
stops with the one-line error kohya itself stops with. No kohya option of theirs is "unknown"."""

import json
import re
import tomllib
import warnings

import pytest
from safetensors import safe_open

from conftest import ROOT
from trainer.config import TrainConfig
from trainer.config_files import config_from_file
from trainer.errors import TrainerError
from trainer.train.loop import train
from trainer.train.snapshots import save_outputs

CONFIGS = ROOT / "tests/data/kohya_configs"
KOHYA = json.loads((ROOT / "tests/data/kohya_options.json").read_text())
KOHYA_NAMES = set(KOHYA["train_network"]) | set(KOHYA["sdxl_train_network"])
FILES = sorted(p.name for p in CONFIGS.iterdir() if p.suffix in (".toml", ".json"))

# where kohya stops too (its own message in the comment), and what we say
STOPS = {
    # train_network: "bucket_reso_steps is 1. it must be divisible by 64" (the GUI preset's value)
    "gui_sd15_loha_lycoris.json": "bucket_reso_steps",
    # sdxl_train_network: "when caching Text Encoder output, either caption_dropout_rate, shuffle_caption,
    # token_warmup_step or caption_tag_dropout_rate cannot be used"
    "sdxl_spiderverse.toml": "shuffle_caption",
    # sdxl_train_network: "bucket_reso_steps is 1. it must be divisible by 32"
    "gui_sdxl_standard_adamw8bit.json": "bucket_reso_steps",
}


def raw_settings(path):
    """The file's own keys, sections flattened as kohya flattens them."""
    values = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    flat = {k: v for section in values.values() if isinstance(section, dict) for k, v in section.items()}
    flat.update({k: v for k, v in values.items() if not isinstance(v, dict)})
    return flat


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# kohya's prompt file\nltdemo, a star --n blurry --w 64 --h 64 --s 2 --d 1\n")
    return path


def test_the_collection_is_sourced():
    sources = (CONFIGS / "SOURCES.md").read_text()
    assert len([f for f in FILES if f.endswith(".toml")]) >= 8 and len([f for f in FILES if f.endswith(".json")]) >= 3
    for name in FILES:
        assert f"`{name}`" in sources, f"{name} has no source in SOURCES.md"


@pytest.mark.parametrize("name", FILES)
def test_published_config_trains_or_stops_as_kohya(name, tiny_models, star_dataset, prompt_file, tmp_path):
    path = CONFIGS / name
    family = "sdxl" if "sdxl" in name else "sd15"
    raw = raw_settings(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = config_from_file(path).to_dict()
            values.update(pretrained_model_name_or_path=str(tiny_models(family)), train_data_dir=str(star_dataset),
                          output_dir=str(tmp_path / "out"), reg_data_dir="", vae="", resume="", network_weights="",
                          dataset_config="", cache_dir="", max_train_steps=1, resolution="64", train_batch_size=1,
                          min_bucket_reso=64, max_bucket_reso=128)
            if values["logging_dir"]:
                values["logging_dir"] = str(tmp_path / "logs")
            if raw.get("sample_prompts"):
                values["sample_prompts"] = str(prompt_file)
            config = TrainConfig.from_dict(values, source=name)
            result = train(config)
            files = save_outputs(result, config)
        except TrainerError as err:
            assert name in STOPS, f"{name} stopped where kohya trains: {err}"
            assert STOPS[name] in str(err) and len(str(err).splitlines()) == 1
            return
    unknown = {m.group(1) for w in caught if (m := re.search(r"unknown setting '([^']+)'", str(w.message)))}
    assert not unknown & KOHYA_NAMES  # only names kohya does not have either (lr_restart_cycles, epoch ...)
    assert name not in STOPS, f"{name} trained; kohya stops with {STOPS.get(name)!r}"
    assert result.steps == 1
    with safe_open(str(files["lora"]), "pt") as f:  # the config's own network went into the file
        ranks = {f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith("lora_down.weight")}
        assert f.metadata()["ss_network_module"] == config.network_module
    assert config.network_dim in ranks
    conv_dim = next((int(a.split("=")[1]) for a in config.network_args if a.startswith("conv_dim=")), 0)
    assert not conv_dim or conv_dim in ranks
