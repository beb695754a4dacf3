"""LyCORIS networks (network_module = "lycoris.kohya" / TrainConfig.network): each algorithm trains
and writes LyCORIS's layout under our kohya names; LyCORIS files load, apply at a strength, come
off again, convert, and continue training (same algorithm only)."""

import json

import pytest
import torch
from safetensors import safe_open

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.lora.apply import apply_lora, list_adapters, remove_adapter, set_lora_strength
from trainer.lora.lycoris_modules import adapters
from trainer.models.loader import load_model
from trainer.sample import generate
from trainer.train.loop import train
from trainer.train.snapshots import save_outputs


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=4, network_alpha=2, learning_rate=1e-2, train_batch_size=4, max_train_steps=2,
                output_dir=str(out), output_name="ly", network_train_unet_only=True, save_precision="float")
    return TrainConfig(**{**base, **values})


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def parts(tensors):
    return {key.split(".", 1)[1] for key in tensors}


KINDS = {  # network -> (the parts its file has, network_args the metadata records)
    "LoHa": ({"alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}, {"algo": "loha", "preset": "attn-mlp"}),
    # w2 whole where dim is small for the layer (LyCORIS's full-matrix fallback), else factorised
    "LoKr": ({"alpha", "lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}, {"algo": "lokr", "preset": "attn-mlp"}),
    "DoRA": ({"alpha", "lora_down.weight", "lora_up.weight", "dora_scale"},
             {"algo": "lora", "dora_wd": "True", "wd_on_output": "False", "preset": "attn-mlp"}),
    "OFT": ({"alpha", "oft_blocks"}, {"algo": "diag-oft", "preset": "attn-mlp"}),
}


@pytest.mark.parametrize("network", list(KINDS))
def test_each_network_trains_and_writes_lycoris_layout(tiny_models, star_dataset, tmp_path, network):
    config = config_for(tiny_models("sd15"), star_dataset, tmp_path, network=network)
    result = train(config)
    tensors, meta = read(save_outputs(result, config)["lora"])
    want_parts, want_args = KINDS[network]
    assert parts(tensors) == want_parts
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"]) == {**want_args, "dropout": None}
    # attn-mlp: kohya's LoRA set on the transformer blocks plus the time embedding's two linears
    names = {key.split(".", 1)[0] for key in tensors}
    assert {"lora_unet_time_embedding_linear_1", "lora_unet_time_embedding_linear_2"} <= names
    assert not any("resnets" in name for name in names)
    trained = [p for p in result.lora.tensors.values() if p.ndim > 0]
    assert trained and all(torch.isfinite(p).all() for p in trained)
    if network == "DoRA":  # the input axis: (1, in_features), the one ComfyUI applies exactly
        scale = tensors["lora_unet_time_embedding_linear_2.dora_scale"]
        assert scale.shape[0] == 1 and scale.shape[1] > 1


def test_locon_and_full_preset(tiny_models, star_dataset, tmp_path):
    locon = config_for(tiny_models("sd15"), star_dataset, tmp_path / "a", network="LoCon")
    assert locon.validate().conv_dim == 4 and locon.network_module == "networks.lora"
    tensors, _ = read(save_outputs(train(locon), locon)["lora"])
    assert any(v.ndim == 4 and v.shape[-1] == 3 for k, v in tensors.items() if k.endswith("lora_down.weight"))
    # LyCORIS's default preset "full" names time_embedding.linear_1 twice (kohya + LyCORIS stops there):
    # one module here, plus conv_in / conv_out and the ResNet convs
    full = config_for(tiny_models("sd15"), star_dataset, tmp_path / "b", network_module="lycoris.kohya",
                      network_args=["algo=loha"])
    names = [key.split(".", 1)[0] for key in read(save_outputs(train(full), full)["lora"])[0] if key.endswith("alpha")]
    assert len(names) == len(set(names)) and names.count("lora_unet_time_embedding_linear_1") == 1
    assert {"lora_unet_conv_in", "lora_unet_conv_out"} <= set(names)


@pytest.mark.parametrize("values, words", [
    ({"network_module": "lycoris.kohya", "network_args": ["algo=ia3"]},
     'algo="ia3" is not an algorithm this trainer trains: use one of lora, locon, loha, lokr, diag-oft, oft'),
    ({"network_module": "lycoris.kohya", "network_args": ["preset=everything"]}, "attn-mlp"),
    ({"network_module": "lycoris.kohya", "network_args": ["train_norm=True"]}, "norm layers"),
    ({"network": "LoHa", "network_args": ["algo=lokr"]}, "algo=lokr"),
    ({"network": "LoRA", "network_module": "lycoris.kohya"}, "trains networks.lora"),
    ({"network": "GLoRA"}, "LoRA, LoCon, LoHa, LoKr, DoRA, OFT"),
])
def test_bad_choices_stop_before_anything_loads_and_say_what_to_write(tmp_path, values, words):
    with pytest.raises(TrainerError, match=words.replace("(", r"\(")):
        config_for(tmp_path / "no_model", tmp_path, tmp_path, **values).validate()


def latents(model):
    return generate(model, "a star", steps=2, width=64, height=64, output_type="latent")


@pytest.mark.parametrize("family, network", [("sd15", "LoHa"), ("sdxl", "LoKr"), ("kolors", "DoRA")])
def test_files_apply_at_a_strength_and_come_off(tiny_models, star_dataset, tmp_path, family, network):
    te = family == "sdxl"  # SDXL: both text encoders too, under lora_te1_ / lora_te2_
    config = config_for(tiny_models(family), star_dataset, tmp_path, network=network, network_train_unet_only=not te,
                        text_encoder_lr=1e-2 if te else None, max_train_steps=3)
    path = save_outputs(train(config), config)["lora"]
    model = load_model(tiny_models(family), family, "fp32")
    base = latents(model)
    name = apply_lora(model, path, 1.0)
    assert list_adapters(model) == [name]
    if te:
        assert adapters(model.pipe.text_encoder_2)[name]
    full = latents(model)
    assert (full - base).abs().max() > 1e-3
    set_lora_strength(model, {name: 0.0})
    assert torch.equal(latents(model), base)  # strength 0 is the model, DoRA included (ComfyUI's meaning)
    set_lora_strength(model, {name: 0.5})
    half = latents(model)
    assert 0 < (half - base).abs().max() < (full - base).abs().max()
    remove_adapter(model, name)
    assert list_adapters(model) == [] and torch.equal(latents(model), base)


@pytest.mark.parametrize("family, network", [("sd15", "LoHa"), ("sdxl", "LoKr")])
def test_continue_training_takes_the_file_and_the_same_algorithm_only(tiny_models, star_dataset, tmp_path, family,
                                                                     network):
    model = tiny_models(family)
    first = config_for(model, star_dataset, tmp_path / "a", network=network)
    path = save_outputs(train(first), first)["lora"]
    saved, _ = read(path)
    again = config_for(model, star_dataset, tmp_path / "b", network=network, network_weights=str(path),
                       learning_rate=1e-12, max_train_steps=1)
    result = train(again)  # 1 step at lr ~0: the network read back is the file (SDXL: same SGM names)
    assert set(result.lora.tensors) == set(saved)
    for key, value in saved.items():
        assert torch.allclose(result.lora.tensors[key].float(), value.float(), atol=1e-5), key
    other = "LoKr" if network == "LoHa" else "LoHa"
    with pytest.raises(TrainerError, match=f"holds {network.lower()} modules, this run trains {other.lower()}"):
        train(config_for(model, star_dataset, tmp_path / "c", network=other, network_weights=str(path)))
    with pytest.raises(TrainerError, match="does not have the shapes .* dim_from_weights"):
        train(config_for(model, star_dataset, tmp_path / "e", network=network, network_weights=str(path),
                         network_dim=8, network_alpha=4))
    taken = train(config_for(model, star_dataset, tmp_path / "f", network=network, network_weights=str(path),
                             network_dim=8, network_alpha=4, dim_from_weights=True, learning_rate=1e-12,
                             max_train_steps=1))
    assert {k: v.shape for k, v in taken.lora.tensors.items()} == {k: v.shape for k, v in saved.items()}
    with pytest.raises(TrainerError, match='is a LyCORIS file .*lycoris.kohya'):
        train(config_for(model, star_dataset, tmp_path / "d", network_weights=str(path)))


def test_a_new_run_on_the_same_model_drops_the_old_network(tiny_models, star_dataset, tmp_path):
    model = load_model(tiny_models("sd15"), "sd15", "fp32")
    train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "a", network="OFT"), model=model)
    assert list_adapters(model) == ["lt_lora"] and adapters(model.unet)
    result = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "b"), model=model)
    assert not adapters(model.unet) and all(".lora_down." in k or ".lora_up." in k or k.endswith(".alpha")
                                            for k in result.lora.tensors)


def test_convert_keeps_lycoris_parts_from_comfyui_trainer_names(tiny_models, star_dataset, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from trainer.lora.convert import convert_file
    from trainer.lora.names import _config_key, _diffusers_to_ldm

    config = config_for(tiny_models("sdxl"), star_dataset, tmp_path, network="LoKr")
    tensors, _ = read(save_outputs(train(config), config)["lora"])  # SDXL: kohya's SGM names
    assert any(k.startswith("lora_unet_input_blocks_") for k in tensors)
    # the same modules as ComfyUI's own trainer names them: diffusion_model.<LDM path>.<part>
    unet_config = UNet2DConditionModel.load_config(str(tiny_models("sdxl") / "unet"))
    ldm = {v.replace(".", "_"): v for v in _diffusers_to_ldm(_config_key(unet_config)).values()}
    comfy = {f"diffusion_model.{ldm[k.split('.', 1)[0][len('lora_unet_'):]]}.{k.split('.', 1)[1]}": v
             for k, v in tensors.items()}
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    out, summary = convert_file(tmp_path / "comfy.safetensors", tmp_path / "ours.safetensors", "sdxl",
                                model_folder=tiny_models("sdxl"), precision="fp32")
    converted, meta = read(out)
    assert parts(converted) == parts(tensors) and len(converted) == len(tensors)
    assert meta["ss_network_module"] == "lycoris.kohya" and "LoKr" in summary
    by_part = lambda d: sorted((k.split(".", 1)[1], tuple(v.shape)) for k, v in d.items())  # noqa: E731
    assert by_part(converted) == by_part(tensors)


def test_scale_weight_norms_uses_lycoris_max_norm(tiny_models, star_dataset, tmp_path):
    from trainer.train.api import Callbacks

    logs = []
    config = config_for(tiny_models("sd15"), star_dataset, tmp_path, network="LoHa", scale_weight_norms=1e-3)
    model = load_model(tiny_models("sd15"), "sd15", "fp32")
    train(config, model=model, callbacks=Callbacks(log=logs.append))
    line = next(line for line in logs if line.startswith("scale_weight_norms"))
    assert " of 74 modules scaled" in line and not line.startswith("scale_weight_norms 0.001: 0 of")
    modules = adapters(model.unet)["lt_lora"].values()  # LyCORIS's LoHa norm, at most max_norm after the last step
    assert max(float((m.get_weight(m.shape) * m.scalar).norm()) for m in modules) <= 1e-3 * 1.01


@pytest.mark.parametrize("network", ["DoRA", "LoKr"])
def test_a_bf16_model_generates_with_its_trained_network_and_with_a_file(tiny_models, star_dataset, tmp_path, network):
    # LyCORIS trains fp32 parameters under autocast; generating runs without autocast on the bf16
    # weights (real ComfyUI, Sampler preview after LoRA Train): the modules must meet bf16 inputs
    model = load_model(tiny_models("sd15"), "sd15", "bf16")
    config = config_for(tiny_models("sd15"), star_dataset, tmp_path, network=network, mixed_precision="bf16")
    path = save_outputs(train(config, model=model), config)["lora"]
    trained = latents(model)
    assert trained.dtype == torch.bfloat16 and torch.isfinite(trained.float()).all()
    fresh = load_model(tiny_models("sd15"), "sd15", "bf16")
    base = latents(fresh)
    name = apply_lora(fresh, path, 1.0)
    assert (latents(fresh).float() - base.float()).abs().max() > 0
    set_lora_strength(fresh, {name: 0.0})
    assert torch.equal(latents(fresh), base)
