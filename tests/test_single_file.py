"""Single-file (LDM/SGM layout) checkpoints: write, read back exactly, fail clearly. Offline."""

import socket

import pytest
import torch

from trainer.errors import TrainerError
from trainer.models.loader import load_model, load_vae
from trainer.models.single_file import CONFIGS, load_single_file
from trainer.tiny.build import write_tiny_checkpoint, write_tiny_model

PARTS = {"sd15": ["unet", "vae", "text_encoder"], "sdxl": ["unet", "vae", "text_encoder", "text_encoder_2"]}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach a hub fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def tiny(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    folder = write_tiny_model(request.param, tmp / "model", seed=0)
    file = write_tiny_checkpoint(request.param, tmp / "model.safetensors", seed=0)
    return request.param, folder, file


def assert_same_weights(a, b, family, dtype=None):
    for name in PARTS[family]:
        sa, sb = getattr(a.pipe, name).state_dict(), getattr(b.pipe, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, (name, key)
            assert torch.equal(sa[key], sb[key]), (name, key)
        if dtype is not None:
            want = torch.float32 if name == "vae" else dtype
            assert {t.dtype for t in sb.values() if t.is_floating_point()} == {want}, name


def test_checkpoint_loads_exactly_like_the_folder(tiny):
    family, folder, file = tiny
    from_folder = load_model(folder)
    from_file = load_model(file, config_dir=folder, tokenizer_dir=folder)
    assert from_file.family.name == family  # auto-detected from the keys
    assert from_file.source == str(file)
    assert_same_weights(from_folder, from_file, family, torch.float32)
    assert dict(from_file.pipe.scheduler.config) == dict(from_folder.pipe.scheduler.config)
    assert type(from_file.pipe).__name__ == from_file.family.pipeline_class_name
    if family == "sdxl":
        assert from_file.pipe.tokenizer_2.pad_token == "!"
    assert not any(p.requires_grad for p in from_file.unet.parameters())


def test_bf16_loads_straight_into_bf16(tiny):
    family, folder, file = tiny
    from_folder = load_model(folder, dtype="bf16")
    from_file = load_model(file, dtype="bf16", config_dir=folder, tokenizer_dir=folder)
    assert from_file.dtype == torch.bfloat16
    assert_same_weights(from_folder, from_file, family, torch.bfloat16)


def test_written_keys_follow_the_original_layout(tiny):
    family, folder, file = tiny
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        keys = set(f.keys())
        c = 16  # the tiny VAE's last width
        assert f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight").shape == (c, c, 1, 1)
        assert f.get_tensor("first_stage_model.decoder.mid.attn_1.proj_out.weight").shape == (c, c, 1, 1)
        if family == "sdxl":
            g = "conditioner.embedders.1.model."
            width = f.get_tensor(g + "positional_embedding").shape[1]
            assert f.get_tensor(g + "transformer.resblocks.0.attn.in_proj_weight").shape == (3 * width, width)
    for key in ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "first_stage_model.encoder.down.0.block.0.conv1.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.quant_conv.weight", "first_stage_model.decoder.norm_out.weight"]:
        assert key in keys, key
    if family == "sd15":
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
        assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # UpBlock2D: upsampler in slot 1
    else:
        assert "model.diffusion_model.label_emb.0.0.weight" in keys
        assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
        assert {"conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.ln_final.weight",
                "conditioner.embedders.1.model.token_embedding.weight"} <= keys
        assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys  # CrossAttnUpBlock2D: slot 2


def test_real_architectures_convert_to_the_real_key_names():
    """The bundled real configs, built on the meta device, give the names diffusers itself detects."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from trainer.models.ldm_write import checkpoint_tensors
    from trainer.tiny.full_size import build_full_size_part

    for family, model_type in (("sd15", "v1"), ("sdxl", "xl_base")):
        with torch.device("meta"):
            parts = {name: build_full_size_part(family, name) for name in PARTS[family]}
        tensors = checkpoint_tensors(family, parts)
        assert infer_diffusers_model_type(tensors) == model_type
        unet = "model.diffusion_model."
        if family == "sdxl":  # 3 blocks: input_blocks 0-8, output_blocks 0-8, 10 transformer layers deep
            assert unet + "output_blocks.8.0.skip_connection.weight" in tensors
            assert unet + "input_blocks.9.0.in_layers.0.weight" not in tensors
            assert unet + "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight" in tensors
        else:  # 4 blocks: input_blocks 0-11, output_blocks 0-11
            assert unet + "output_blocks.11.1.proj_out.weight" in tensors
            assert unet + "input_blocks.11.0.in_layers.0.weight" in tensors


@pytest.mark.parametrize("family, counts", [
    ("sd15", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sdxl", {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
              "text_encoder_2": 694_659_840}),
])
def test_bundled_configs_build_the_real_architectures(family, counts):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        for name, expected in counts.items():
            folder = str(CONFIGS / family / name)
            if name in ("unet", "vae"):
                cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
                model = cls.from_config(cls.load_config(folder))
            else:
                cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                model = cls(CLIPTextConfig.from_pretrained(folder))
            assert sum(p.numel() for p in model.parameters()) == expected, name
    assert (CONFIGS / family / "scheduler" / "scheduler_config.json").is_file()
    assert not list((CONFIGS / family).rglob("vocab.json"))


def test_missing_tokenizer_says_where_to_put_one(tiny, tmp_path):
    family, folder, file = tiny
    with pytest.raises(TrainerError, match="carry no tokenizer.*tokenizer_dir"):
        load_single_file(file)  # bundled configs: no tokenizer there
    config_only = tmp_path / "configs"
    for sub in PARTS[family]:
        (config_only / sub).mkdir(parents=True)
        (config_only / sub / "config.json").write_bytes((folder / sub / "config.json").read_bytes())
    with pytest.raises(TrainerError, match="comfy/sd1_tokenizer"):
        load_model(file, config_dir=config_only)
    # a flat tokenizer folder (vocab.json + merges.txt, like ComfyUI's sd1_tokenizer) is enough
    model = load_model(file, config_dir=config_only, tokenizer_dir=folder / "tokenizer")
    assert model.pipe.tokenizer.model_max_length == 77


def test_truncated_file_names_the_file(tiny, tmp_path):
    family, folder, file = tiny
    broken = tmp_path / "broken.safetensors"
    data = file.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainerError, match="broken.safetensors"):
        load_model(broken, config_dir=folder, tokenizer_dir=folder)


def test_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.ones(1)}, str(other))
    with pytest.raises(TrainerError, match="Not a Stable Diffusion checkpoint"):
        load_model(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not a safetensors file")
    with pytest.raises(TrainerError, match="junk.safetensors"):
        load_model(junk)


def test_incomplete_checkpoint_and_kolors(tiny, tmp_path):
    family, folder, file = tiny
    from safetensors.torch import load_file, save_file

    unet_only = tmp_path / "unet_only.safetensors"
    save_file({k: v for k, v in load_file(str(file)).items() if not k.startswith("first_stage_model.")},
              str(unet_only))
    with pytest.raises(TrainerError, match="no vae tensors"):
        load_model(unet_only, config_dir=folder, tokenizer_dir=folder)
    with pytest.raises(TrainerError, match="Kolors"):
        load_model(file, family="kolors", config_dir=folder, tokenizer_dir=folder)


def test_vae_files(tiny, tmp_path):
    family, folder, file = tiny
    from safetensors.torch import load_file, save_file

    reference = load_model(folder).vae.state_dict()
    # a diffusers-format VAE file with its config.json beside it
    vae = load_vae(folder / "vae" / "diffusion_pytorch_model.safetensors")
    # a bare LDM-layout VAE file (like vae-ft-mse-840000) with a config beside it; and a full checkpoint
    bare = tmp_path / "vae" / "vae.safetensors"
    bare.parent.mkdir()
    (bare.parent / "config.json").write_bytes((folder / "vae" / "config.json").read_bytes())
    save_file({k[len("first_stage_model."):]: v for k, v in load_file(str(file)).items()
               if k.startswith("first_stage_model.")}, str(bare))
    for loaded in (vae, load_vae(bare)):
        state = loaded.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in state)
    with pytest.raises(TrainerError, match="does not load as a Stable Diffusion VAE"):
        load_vae(file)  # tiny weights against the bundled real SD1.5 VAE config: shapes differ


@pytest.fixture(scope="module")
def comfyui_tokenizer(tmp_path_factory):
    """A tokenizer folder as ComfyUI ships it (comfy/sd1_tokenizer: model_max_length 8192)."""
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    return write_comfyui_sd1_tokenizer(tmp_path_factory.mktemp("comfy") / "sd1_tokenizer")


def test_checkpoint_with_comfyui_tokenizer_trains_text_encoder_and_samples_in_bf16(tiny, comfyui_tokenizer,
                                                                                   star_dataset, tmp_path):
    """Prompts are padded to the encoder's 77 positions, not the tokenizer file's 8192."""
    from PIL import Image

    from trainer.config import TrainConfig
    from trainer.train.loop import train

    family, _, file = tiny
    model = load_model(file, tokenizer_dir=comfyui_tokenizer)  # the file carries its tiny configs
    tokenizers = [model.pipe.tokenizer] + ([model.pipe.tokenizer_2] if family == "sdxl" else [])
    assert [t.model_max_length for t in tokenizers] == [77] * len(tokenizers)
    config = TrainConfig(pretrained_model_name_or_path=str(file), tokenizer_dir=str(comfyui_tokenizer),
                         train_data_dir=str(star_dataset), output_dir=str(tmp_path), output_name="sf",
                         resolution="64", network_dim=4, train_batch_size=4, max_train_steps=2,
                         text_encoder_lr=1e-4, mixed_precision="bf16",
                         sample_prompts=["ltdemo, " * 40 + "--d 1 --s 2 --w 64 --h 64"], sample_every_n_steps=1)
    result = train(config)
    assert Image.open(result.files["sample_00_s000002"]).size == (64, 64)
    prefixes = {k.split("_text_model")[0] for k in result.lora.tensors if k.startswith("lora_te")}
    assert prefixes == ({"lora_te"} if family == "sd15" else {"lora_te1", "lora_te2"})


def test_cli_samples_a_checkpoint_with_the_readme_tokenizer_advice(tiny, comfyui_tokenizer, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from conftest import ROOT

    _, _, file = tiny
    run = subprocess.run([sys.executable, "-m", "trainer", "sample", "--model", str(file), "--tokenizer_dir",
                          str(comfyui_tokenizer), "--prompt", "ltdemo", "--steps", "2", "--width", "64",
                          "--height", "64", "--dtype", "bf16", "--out", str(tmp_path / "s.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert Image.open(tmp_path / "s.png").size == (64, 64)
