"""The saved LoRA: ComfyUI/kohya key layout, trained alpha, metadata, precision, and the file
reproducing the in-memory LoRA when applied to a freshly loaded model."""

import json

import pytest
import torch
from safetensors import safe_open

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.lora.apply import apply_lora
from trainer.models.loader import load_model
from trainer.sample import generate
from trainer.train.loop import save_outputs, train


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    from trainer.demo import paint_dataset

    data = paint_dataset(out / "data")
    results = {}
    for family in ("sdxl", "kolors", "sd15"):
        config = TrainConfig(pretrained_model_name_or_path=str(tiny_models(family)), train_data_dir=str(data),
                             resolution="64", network_dim=4, network_alpha=2, learning_rate=5e-3,
                             max_train_steps=6, train_batch_size=2, output_dir=str(out / family),
                             output_name="t", save_precision="fp32", class_tokens="ltdemo",
                             conv_dim=4 if family == "sdxl" else 0, conv_alpha=1)
        result = train(config)
        results[family] = (config, result, save_outputs(result, config))
    return results


@pytest.mark.parametrize("family", ["sdxl", "kolors", "sd15"])
def test_keys_are_kohya_unet_keys_with_the_trained_alpha(trained, family):
    config, result, files = trained[family]
    with safe_open(str(files["lora"]), "pt") as f:
        keys = list(f.keys())
        modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
        conv3x3 = set()
        for module in modules:
            assert module.startswith("lora_unet_") and "." not in module
            down, up = f.get_tensor(f"{module}.lora_down.weight"), f.get_tensor(f"{module}.lora_up.weight")
            assert down.shape[0] == 4 and up.shape[1] == 4
            if down.ndim == 4 and down.shape[-1] == 3:  # kohya: 3x3 convs at conv_alpha, the rest at network_alpha
                conv3x3.add(module)
            assert f.get_tensor(f"{module}.alpha").item() == (1.0 if module in conv3x3 else 2.0)
        assert len(keys) == 3 * len(modules)
        assert any("attn2_to_k" in m for m in modules) and any("to_out_0" in m for m in modules)
        assert bool(conv3x3) == (config.conv_dim > 0)
        # kohya's names: SGM blocks for SDXL (what sdxl_train_network writes), diffusers' for SD1.5 / Kolors
        assert all(("input_blocks" in m or "middle_block" in m or "output_blocks" in m) == (family == "sdxl")
                   for m in modules)
        assert any(f.get_tensor(k).abs().sum() > 0 for k in keys if k.endswith("lora_up.weight"))


def test_metadata_is_kohya_and_modelspec(trained):
    config, result, files = trained["sdxl"]
    with safe_open(str(files["lora"]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_steps"] == "6" and meta["ss_batch_size_per_device"] == "2"
    assert meta["ss_resolution"] == "(64, 64)" and meta["ss_seed"] == "42"
    assert json.loads(meta["ss_tag_frequency"])["10_ltdemo"]["ltdemo"] == 4
    assert float(meta["ss_training_started_at"]) > 1.7e9
    assert TrainConfig.from_dict(__import__("tomllib").loads(meta["lt_config"])).to_dict() == config.to_dict()


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_save_precision(trained, tmp_path, precision, dtype):
    from trainer.lora.kohya_format import save_lora

    _, result, _ = trained["sd15"]
    path = save_lora(result.lora, tmp_path / "x.safetensors", precision)
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
        assert f.metadata()["ss_save_precision"] == precision
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left behind


@pytest.mark.parametrize("family", ["sdxl", "kolors", "sd15"])
def test_saved_file_reproduces_the_in_memory_lora(trained, tiny_models, family):
    config, result, files = trained[family]
    args = dict(prompt="ltdemo, a yellow star", seed=3, steps=4, cfg=4.0, width=64, height=64,
                sampler="euler", output_type="latent")
    in_memory = generate(result.model, **args)
    fresh = load_model(tiny_models(family))
    plain = generate(fresh, **args)
    apply_lora(fresh, files["lora"], strength=1.0)
    from_file = generate(fresh, **args)
    assert (in_memory - plain).abs().max() > 1e-3  # the LoRA changes the picture
    torch.testing.assert_close(from_file, in_memory, atol=1e-4, rtol=1e-4)


def test_strength_scales_the_effect(trained, tiny_models):
    _, _, files = trained["sdxl"]
    model = load_model(tiny_models("sdxl"))
    apply_lora(model, files["lora"], strength=1.0)
    args = dict(prompt="ltdemo", seed=5, steps=4, width=64, height=64, sampler="euler", output_type="latent")
    zero, half, full = (generate(model, lora_strength=s, **args) for s in (0.0, 0.5, 1.0))
    base = generate(load_model(tiny_models("sdxl")), **args)
    torch.testing.assert_close(zero, base, atol=1e-5, rtol=1e-5)
    assert 0 < (half - zero).abs().mean() < (full - zero).abs().mean()


def test_diffusers_peft_format_file_applies_too(trained, tiny_models, tmp_path):
    """A LoRA saved in diffusers' own layout (unet.<path>.lora_A/lora_B) gives the same result."""
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    _, result, files = trained["kolors"]
    state = get_peft_model_state_dict(result.model.unet, adapter_name="lt_lora")
    StableDiffusionXLPipeline.write_lora_layers(
        {f"unet.{k}": v for k, v in state.items()}, save_directory=str(tmp_path), is_main_process=True,
        weight_name="peft.safetensors", save_function=None, safe_serialization=True)
    args = dict(prompt="ltdemo", seed=2, steps=4, width=64, height=64, sampler="euler", output_type="latent")
    a = load_model(tiny_models("kolors"))
    apply_lora(a, files["lora"])
    b = load_model(tiny_models("kolors"))
    # alpha is not stored in this layout: peft's default scale (alpha = rank) is 2x ours here
    apply_lora(b, tmp_path / "peft.safetensors", strength=0.5)
    torch.testing.assert_close(generate(a, **args), generate(b, **args), atol=1e-4, rtol=1e-4)


def test_bad_lora_files(tiny_models, tmp_path):
    model = load_model(tiny_models("sd15"))
    with pytest.raises(TrainerError, match="LoRA file not found"):
        apply_lora(model, tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(TrainerError, match="corrupt or incomplete"):
        apply_lora(model, tmp_path / "junk.safetensors")


def test_metadata_carries_the_base_model_hash(trained, tiny_models):
    import hashlib

    _, result, _ = trained["sd15"]
    unet_file = tiny_models("sd15") / "unet" / "diffusion_pytorch_model.safetensors"
    assert result.lora.metadata["ss_new_sd_model_hash"] == hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert len(result.lora.metadata["ss_sd_model_hash"]) == 8


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_diffusers_layout_save_gives_the_same_images(trained, tiny_models, tmp_path, family):
    from trainer.lora.kohya_format import save_lora

    _, result, files = trained[family]
    path = save_lora(result.lora, tmp_path / "d.safetensors", "fp32", layout="diffusers")
    with safe_open(str(path), "pt") as f:
        assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in f.keys())
    args = dict(prompt="ltdemo", seed=4, steps=3, width=64, height=64, sampler="euler", output_type="latent")
    a, b = load_model(tiny_models(family)), load_model(tiny_models(family))
    apply_lora(a, files["lora"])
    apply_lora(b, path)
    torch.testing.assert_close(generate(a, **args), generate(b, **args), atol=1e-4, rtol=1e-4)
