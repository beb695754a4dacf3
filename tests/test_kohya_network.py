"""networks.lora builds kohya's LoRANetwork module set; network_args, network_weights,
dim_from_weights, network_train_text_encoder_only, kohya's dropouts and LoRA+ act as kohya's."""

import json

import pytest
import torch
from safetensors import safe_open

from tests.lora_builders import real_unet_config
from trainer.config import TrainConfig
from trainer.config_files import config_from_toml
from trainer.errors import TrainerError
from trainer.lora.targets import network_spec, unet_targets
from trainer.train.loop import train
from trainer.train.snapshots import save_outputs


def meta_unet(family):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(real_unet_config(family))


def spec_for(family, **values):
    return network_spec(TrainConfig(network_dim=8, network_alpha=4, **values), family)


@pytest.mark.parametrize("family, linear, conv3x3, resnet_linear", [("sd15", 192, 50, 36), ("sdxl", 722, 38, 28)])
def test_real_architectures_get_kohyas_module_counts(family, linear, conv3x3, resnet_linear):
    # kohya sd-scripts 48d368fa on full-size SD1.5 / SDXL: 192 / 722 UNet modules without conv_dim
    unet = meta_unet(family)
    plain = unet_targets(unet, spec_for(family))
    assert len(plain) == linear and set(plain.values()) == {(8, 4.0)}
    assert any(p.endswith("proj_in") for p in plain) and any(p.endswith("ff.net.2") for p in plain)
    locon = unet_targets(unet, spec_for(family, network_args=["conv_dim=4", "conv_alpha=2"]))
    values = list(locon.values())
    assert values.count((4, 2.0)) == conv3x3  # 3x3 convs of ResNet blocks and samplers at conv_dim
    assert len(locon) == linear + conv3x3 + resnet_linear  # time_emb_proj / conv_shortcut at network_dim


def test_kolors_defaults_to_diffsynths_attention_set_and_target_chooses():
    unet = meta_unet("kolors")
    attention = unet_targets(unet, spec_for("kolors"))
    assert len(attention) == 560 and all(p.endswith(("to_q", "to_k", "to_v", "to_out.0")) for p in attention)
    assert len(unet_targets(unet, spec_for("kolors", network_args=["target=kohya"]))) == 722
    assert len(unet_targets(meta_unet("sdxl"), spec_for("sdxl", network_args=["target=attention"]))) == 560


@pytest.mark.parametrize("args, words", [(["conv_dim"], "key=value"), (["target=mlp"], "kohya"),
                                         (["block_dims=2,2,2"], "per-block"), (["conv_dim=x"], "not a number")])
def test_bad_network_args_say_what_to_write(args, words):
    with pytest.raises(TrainerError, match=words):
        spec_for("sd15", network_args=args)


def test_network_args_networks_lora_does_not_read_are_noted_as_kohya_ignores_them():
    with pytest.warns(UserWarning, match="algo, dropout are not read by networks.lora"):
        spec = spec_for("sd15", network_args=["algo=loha", "dropout=null", "conv_dim=2"])
    assert spec.conv_dim == 2 and spec.dropout == 0.0


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=4, network_alpha=2, learning_rate=1e-3, train_batch_size=4, max_train_steps=2,
                output_dir=str(out), output_name="k", network_train_unet_only=True)
    return TrainConfig(**{**base, **values})


def lora_keys(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_network_args_conv_gives_locon_with_kohyas_alphas_and_metadata(tiny_models, star_dataset, tmp_path):
    config = config_for(tiny_models("sd15"), star_dataset, tmp_path, network_args=["conv_dim=2", "conv_alpha=1"])
    files = save_outputs(train(config), config)
    tensors, meta = lora_keys(files["lora"])
    convs = [k for k, v in tensors.items() if k.endswith("lora_down.weight") and v.ndim == 4 and v.shape[-1] == 3]
    assert convs and all(tensors[k].shape[0] == 2 for k in convs)
    assert all(tensors[k.replace("lora_down.weight", "alpha")].item() == 1.0 for k in convs)
    assert tensors["lora_unet_down_blocks_0_resnets_0_time_emb_proj.alpha"].item() == 2.0
    # kohya adds network_dropout as "dropout" (its workaround for LyCORIS): null when not set
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1", "dropout": None}
    # kohya's values: the optimizer's class path, and the epochs max_train_steps spans (2 of 10 per epoch)
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW" and meta["ss_num_epochs"] == "1"


def test_network_weights_continues_and_dim_from_weights_takes_the_files_ranks(tiny_models, star_dataset, tmp_path):
    model = tiny_models("sd15")
    first = config_for(model, star_dataset, tmp_path / "a", text_encoder_lr=1e-3, network_train_unet_only=False)
    path = save_outputs(train(first), first)["lora"]
    saved, _ = lora_keys(path)
    # 0 steps at lr ~0: the LoRA read back equals the file (up weights not zero any more)
    again = config_for(model, star_dataset, tmp_path / "b", text_encoder_lr=1e-12, network_train_unet_only=False,
                       network_weights=str(path), learning_rate=1e-12, max_train_steps=1)
    result = train(again)
    for key, value in saved.items():
        assert torch.allclose(result.lora.tensors[key].float(), value.float(), atol=1e-4), key
    with pytest.raises(TrainerError, match="dim_from_weights"):
        train(config_for(model, star_dataset, tmp_path / "c", network_dim=8, network_weights=str(path)))
    logs = []
    from trainer.train.api import Callbacks

    taken = train(config_for(model, star_dataset, tmp_path / "d", network_dim=8, network_weights=str(path),
                             dim_from_weights=True, text_encoder_lr=1e-3, network_train_unet_only=False),
                  callbacks=Callbacks(log=logs.append))
    assert set(taken.lora.tensors) == set(saved)
    assert all(v.shape[0] == 4 for k, v in taken.lora.tensors.items() if k.endswith("lora_down.weight"))
    assert any(f"{sum(1 for k in saved if k.endswith('.alpha'))} modules loaded" in line for line in logs)


def test_text_encoder_only_trains_no_unet_lora(tiny_models, star_dataset, tmp_path):
    config = config_for(tiny_models("sdxl"), star_dataset, tmp_path, network_train_unet_only=False,
                        network_train_text_encoder_only=True)
    lora = train(config).lora
    assert lora.tensors and all(k.startswith(("lora_te1_", "lora_te2_")) for k in lora.tensors)
    assert any(v.abs().sum() > 0 for k, v in lora.tensors.items() if k.endswith("lora_up.weight"))


def test_kohya_toml_without_unet_only_trains_the_text_encoder_at_learning_rate(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text('learning_rate = 2e-4\nnetwork_dim = 4\n')
    with pytest.warns(UserWarning, match="text encoder"):
        config = config_from_toml(path)
    assert config.trains_text_encoder and config.text_encoder_lr == 2e-4
    path.write_text('learning_rate = 2e-4\nnetwork_train_unet_only = true\n')
    assert not config_from_toml(path).trains_text_encoder
    # what we write reads back as the same run
    ours = TrainConfig(learning_rate=1e-4)
    (tmp_path / "ours.toml").write_text(ours.to_toml())
    assert not config_from_toml(tmp_path / "ours.toml").trains_text_encoder


def test_kohya_dropouts_and_loraplus(tiny_models, star_dataset, tmp_path):
    model = tiny_models("sd15")
    plain = train(config_for(model, star_dataset, tmp_path / "p")).lora.tensors
    dropped = train(config_for(model, star_dataset, tmp_path / "d",
                               network_args=["rank_dropout=0.5", "module_dropout=0.5"], network_dropout=0.1)).lora.tensors
    assert set(plain) == set(dropped)
    assert any(not torch.equal(plain[k], dropped[k]) for k in plain if k.endswith("lora_up.weight"))
    from trainer.lora.builders import build_lora
    from trainer.models.loader import load_model

    loaded = load_model(str(model), "auto", torch.float32)
    network = build_lora(loaded, config_for(model, star_dataset, tmp_path, network_args=["loraplus_lr_ratio=16"],
                                            learning_rate=1e-4), [])
    assert [g["lr"] for g in network.groups] == [1e-4, pytest.approx(16e-4)]
    ups = {id(p) for n, p in loaded.unet.named_parameters() if ".lora_B." in n}
    assert all(id(p) in ups for p in network.groups[1]["params"]) and len(network.groups[1]["params"]) == len(ups)
