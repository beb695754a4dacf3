"""Kolors from Kolors-MZ's separate files (UNet, chatglm3, VAE, tokenizer.model) loads the same
model as the diffusers folder."""

import pytest
import torch
from safetensors.torch import save_file

from trainer.errors import TrainerError
from trainer.models.kolors_files import load_kolors_files
from trainer.models.loader import load_model
from trainer.sample import generate


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    folder = tiny_models("kolors")
    reference = load_model(folder)
    out = tmp_path_factory.mktemp("mz")
    save_file({k: v.contiguous() for k, v in reference.unet.state_dict().items()}, str(out / "kolors_unet.safetensors"))
    save_file({f"transformer.{k}": v.contiguous() for k, v in reference.pipe.text_encoder.state_dict().items()},
              str(out / "chatglm3.safetensors"))
    save_file({k: v.contiguous() for k, v in reference.vae.state_dict().items()}, str(out / "vae.safetensors"))
    (out / "config.json").write_bytes((folder / "vae" / "config.json").read_bytes())  # the tiny VAE's config
    (out / "tokenizer.model").write_bytes((folder / "text_encoder" / "tokenizer.model").read_bytes())
    return folder, reference, out


def test_separate_files_give_the_same_model(files):
    folder, reference, out = files
    model = load_kolors_files(out / "kolors_unet.safetensors", out / "chatglm3.safetensors", out / "vae.safetensors",
                              out / "tokenizer.model", torch.float32, config_dir=folder)
    for name in ("unet", "text_encoder"):
        a, b = getattr(model.pipe, name).state_dict(), getattr(reference.pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name
    args = dict(prompt="ltdemo", seed=1, steps=3, width=64, height=64, sampler="euler", output_type="latent")
    torch.testing.assert_close(generate(model, **args), generate(reference, **args))


def test_wrong_or_missing_files_are_named(files, tmp_path):
    folder, reference, out = files
    with pytest.raises(TrainerError, match="tokenizer.model not found"):
        load_kolors_files(out / "kolors_unet.safetensors", out / "chatglm3.safetensors", out / "vae.safetensors",
                          tmp_path / "nope.model", config_dir=folder)
    with pytest.raises(TrainerError, match="chatglm3.safetensors is not a Kolors UNet"):
        load_kolors_files(out / "chatglm3.safetensors", out / "chatglm3.safetensors", out / "vae.safetensors",
                          out / "tokenizer.model", config_dir=folder)
    with pytest.raises(TrainerError, match="needs a VAE file"):
        load_kolors_files(out / "kolors_unet.safetensors", out / "chatglm3.safetensors", None,
                          out / "tokenizer.model", config_dir=folder)


def test_loader_node_lists_unet_files_and_finds_the_tokenizer(files, pack, tmp_path, monkeypatch):
    import shutil

    folder, reference, out = files
    models = tmp_path / "models"
    (models / "unet").mkdir(parents=True)
    (models / "LLM").mkdir()
    shutil.copy(out / "kolors_unet.safetensors", models / "unet")
    shutil.copy(out / "chatglm3.safetensors", models / "LLM")
    monkeypatch.setenv("LT_MODELS_DIR", str(models))
    model_mod = pack.nodes.model
    node = pack.nodes.NODE_CLASS_MAPPINGS["LT_KolorsSDXLLoader"]
    types = node.INPUT_TYPES()
    assert "unet/kolors_unet.safetensors" in types["required"]["model"][0]
    assert "chatglm3.safetensors" in types["optional"]["chatglm3"][0]
    llm = models / "LLM" / "chatglm3.safetensors"
    assert model_mod.find_chatglm_tokenizer(llm) is None
    mz = tmp_path / "custom_nodes" / "ComfyUI-Kolors-MZ" / "configs" / "tokenizer"
    mz.mkdir(parents=True)
    shutil.copy(out / "tokenizer.model", mz)
    assert model_mod.find_chatglm_tokenizer(llm) == mz / "tokenizer.model"
    with pytest.raises(pack.trainer.errors.TrainerError, match="also choose its chatglm3 file"):
        node().load("unet/kolors_unet.safetensors", "auto", "fp32")
