"""kohya_ss GUI presets / saved configs (.json with the GUI's own keys) map to the TrainConfig the
GUI's own run would give sd-scripts (bmaltais/kohya_ss kohya_gui/lora_gui.py train_model)."""

import json
import warnings

import pytest

from conftest import ROOT
from trainer.config_files import config_from_file
from trainer.errors import TrainerError
from trainer.kohya_gui import gui_to_kohya, parse_additional_parameters
from trainer.train.loop import train

CONFIGS = ROOT / "tests/data/kohya_configs"


def from_gui(values: dict, tmp_path, name="preset.json"):
    path = tmp_path / name
    path.write_text(json.dumps(values))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = config_from_file(path)
    return config, [str(w.message) for w in caught]


def load_real(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = config_from_file(CONFIGS / name)
    return config, [str(w.message) for w in caught]


def test_a_real_sdxl_preset_maps_key_for_key():
    gui = json.loads((CONFIGS / "gui_sdxl_ai_now_adamw.json").read_text())
    config, messages = load_real("gui_sdxl_ai_now_adamw.json")
    assert config.model_family == "sdxl" and config.no_half_vae  # sdxl + sdxl_no_half_vae
    assert config.resolution == gui["max_resolution"]
    assert config.max_train_steps == int(gui["max_train_steps"])  # set: the GUI passes it, not epoch
    assert config.optimizer_type == gui["optimizer"]
    assert (config.network_dim, config.network_alpha) == (gui["network_dim"], gui["network_alpha"])
    # "Standard" ignores the preset's conv_dim: the GUI writes no conv network_args for it
    assert gui["conv_dim"] and config.network_module == "networks.lora" and config.conv_dim == 0
    assert not any(a.startswith("conv_dim") for a in config.network_args)
    assert (config.noise_offset, config.adaptive_noise_scale) == (gui["noise_offset"], gui["adaptive_noise_scale"])
    assert (config.min_timestep, config.max_timestep) == (gui["min_timestep"], gui["max_timestep"])
    assert config.text_encoder_lr == gui["text_encoder_lr"] and config.trains_text_encoder
    assert config.seed == int(gui["seed"]) and config.clip_skip == int(gui["clip_skip"])
    assert config.caption_extension == gui["caption_extension"]
    assert config.training_comment == gui["training_comment"]
    assert any(m.startswith("note: xformers = True") for m in messages)


def test_kohya_locon_writes_conv_network_args_and_multires_noise():
    gui = json.loads((CONFIGS / "gui_sd15_locon_adamw8bit.json").read_text())
    config, _ = load_real("gui_sd15_locon_adamw8bit.json")
    assert gui["LoRA_type"] == "Kohya LoCon" and config.network_module == "networks.lora"
    assert config.network_args[:2] == [f"conv_dim={gui['conv_dim']}", f"conv_alpha={gui['conv_alpha']}"]
    assert gui["noise_offset_type"] == "Original" and config.noise_offset == gui["noise_offset"]
    assert config.ip_noise_gamma == gui["ip_noise_gamma"] and config.ip_noise_gamma_random_strength


def test_only_the_chosen_noise_type_is_written():
    gui = json.loads((CONFIGS / "gui_sd15_standard_adamw.json").read_text())
    config, _ = load_real("gui_sd15_standard_adamw.json")
    assert gui["noise_offset_type"] == "Multires" and gui["noise_offset"]
    assert config.multires_noise_iterations == gui["multires_noise_iterations"]
    assert config.multires_noise_discount == gui["multires_noise_discount"]
    assert config.noise_offset == 0  # the GUI writes noise_offset only for "Original"
    assert config.sample_prompts == [gui["sample_prompts"]]  # the GUI's prompt text, one line


def test_gui_keys_outside_the_mapping_are_listed_in_one_warning():
    _, messages = load_real("gui_sd15_standard_adamw.json")
    listed = [m for m in messages if "kohya_ss GUI settings not known here" in m]
    assert len(listed) == 1 and "learning_rate_te1" in listed[0] and "fused_optimizer_groups" in listed[0]
    assert not [m for m in messages if "unknown setting" in m]


@pytest.mark.parametrize("lora_type, algo", [("LyCORIS/LoHa", "loha"), ("LoCon", "locon"), ("LyCORIS/LoKr", "lokr")])
def test_lycoris_types_give_the_lycoris_network_the_gui_asks_for(tmp_path, lora_type, algo):
    from trainer.lora.lycoris_spec import ALGOS, lycoris_spec

    config, _ = from_gui({"LoRA_type": lora_type, "conv_dim": 8, "conv_alpha": 4, "factor": -1,
                          "pretrained_model_name_or_path": str(tmp_path / "no_model")}, tmp_path)
    assert config.network_module == "lycoris.kohya"
    assert f"algo={algo}" in config.network_args and "conv_dim=8" in config.network_args
    spec = lycoris_spec(config)
    assert (spec.module, spec.conv_dim, spec.conv_alpha) == (ALGOS[algo], 8, 4.0)


def test_lycoris_algorithms_not_trained_here_are_refused_before_loading(tmp_path):
    config, _ = from_gui({"LoRA_type": "LyCORIS/BOFT", "pretrained_model_name_or_path": str(tmp_path / "no_model")},
                         tmp_path)
    with pytest.raises(TrainerError, match="boft.* is not an algorithm this trainer trains: use one of lora, locon"):
        train(config)  # refused by the settings check, not "model not found"


def test_other_model_families_are_refused(tmp_path):
    with pytest.raises(TrainerError, match="FLUX.1 models, which are not supported"):
        from_gui({"LoRA_type": "Flux1", "max_resolution": "1024,1024"}, tmp_path)
    with pytest.raises(TrainerError, match="flux1_checkbox"):
        from_gui({"LoRA_type": "Standard", "flux1_checkbox": True}, tmp_path)
    config, messages = from_gui({"LoRA_type": "Standard", "flux1_checkbox": False, "t5xxl": "x", "sd3_clip_l": ""},
                                tmp_path)
    assert config.network_module == "networks.lora"
    assert not [m for m in messages if "t5xxl" in m or "sd3_clip_l" in m]  # the GUI ignores them too


def test_warmup_percent_epochs_and_learning_rates(tmp_path):
    base = {"LoRA_type": "Standard", "epoch": 7, "lr_warmup": 10, "learning_rate": 1e-4, "text_encoder_lr": 0,
            "unet_lr": 2e-4, "lr_scheduler_num_cycles": ""}
    config, _ = from_gui(base, tmp_path)
    assert config.lr_warmup_steps == pytest.approx(0.1)  # 10 % of the run, as a ratio
    assert config.max_train_epochs == 7 and config.max_train_steps == 0
    assert config.lr_scheduler_num_cycles == 7  # the GUI's default cycles: the epochs
    assert config.network_train_unet_only and not config.trains_text_encoder  # text_encoder_lr 0
    config, _ = from_gui({**base, "lr_warmup_steps": 25, "max_train_epochs": "3", "max_train_steps": "90",
                          "text_encoder_lr": 5e-5, "unet_lr": 0}, tmp_path)
    assert config.lr_warmup_steps == 25  # absolute steps win over the percent
    assert (config.max_train_epochs, config.max_train_steps) == (3, 0)  # kohya: epochs win over steps
    assert config.network_train_text_encoder_only and config.text_encoder_lr == 5e-5
    config, _ = from_gui({**base, "text_encoder_lr": 0, "unet_lr": 0}, tmp_path)
    assert config.trains_text_encoder and config.text_encoder_lr == 1e-4  # neither: both at learning_rate


def test_additional_parameters_are_kohya_command_line_options(tmp_path):
    assert parse_additional_parameters('--max_grad_norm=0 --network_args "a=1" b=2 --log_config') == {
        "max_grad_norm": 0, "network_args": ["a=1", "b=2"], "log_config": True}
    config, messages = from_gui({"LoRA_type": "Standard", "additional_parameters": "--scale_weight_norms 1.5 --lowram"},
                                tmp_path)
    assert config.scale_weight_norms == 1.5 and any(m.startswith("note: lowram = True") for m in messages)
    with pytest.raises(TrainerError, match="follows no --name"):
        gui_to_kohya({"additional_parameters": "stray --x"})


def test_a_flat_json_of_kohya_names_is_read_as_it_is(tmp_path):
    config, messages = from_gui({"network_module": "networks.lora", "network_dim": 4, "conv_dim": 2,
                                 "network_train_unet_only": True}, tmp_path, "flat.json")
    assert (config.network_dim, config.conv_dim) == (4, 2) and messages == []


def test_the_command_line_reads_a_gui_preset(capsys):
    from trainer.cli import main

    assert main(["vram", "--config", str(CONFIGS / "gui_sdxl_ai_now_adamw.json"), "--set", "train_batch_size=1"]) == 0
    out = capsys.readouterr().out
    assert "Stable Diffusion XL LoRA, 1024x1024, batch 1" in out  # sdxl = true and max_resolution read
