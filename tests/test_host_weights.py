"""Diffusers modules over a host's tensors (trainer/models/host_weights.py): the configs ComfyUI's
descriptions give, real SD1.5/SDXL architectures on the meta device, and no weight copied."""

import json

import pytest
import torch

from conftest import ROOT

COMFY = json.loads((ROOT / "tests" / "data" / "comfy_unet_configs.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_comfy_unet_description_gives_the_real_diffusers_config(family):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from trainer.models.host_configs import bundled, unet_config

    made = unet_config(family, COMFY[family], 32, pooled_dim=1280 if family == "sdxl" else None)
    with init_empty_weights():  # the configs as diffusers completes them (its defaults filled in)
        ours, real = (dict(UNet2DConditionModel.from_config(c).config) for c in (made, bundled(family, "unet")))
    differ = {k for k in set(ours) | set(real) if not k.startswith("_") and ours.get(k) != real.get(k)}
    if family == "sd15":  # the bundled config leaves it to the default, 1 in every block
        assert ours.pop("transformer_layers_per_block") in (1, [1, 1, 1, 1])
        differ.discard("transformer_layers_per_block")
    assert differ == set(), {k: (ours.get(k), real.get(k)) for k in differ}


def test_unet_descriptions_diffusers_cannot_build_are_refused():
    from trainer.errors import TrainerError
    from trainer.models.host_configs import unet_config

    refiner = dict(COMFY["sdxl"], adm_in_channels=2560, context_dim=1280)  # SDXL refiner: 1280 + 5*256
    with pytest.raises(TrainerError, match="refiner"):
        unet_config("sdxl", refiner, 32, pooled_dim=1280)
    with pytest.raises(TrainerError, match="class embedding"):
        unet_config("sd15", dict(COMFY["sd15"], adm_in_channels=1024), 32)


def _meta_host(family, tokenizer_dir):
    """A full-size model as ComfyUI holds it (LDM UNet/VAE names, transformers CLIP names), on meta."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from trainer.models.host_configs import bundled
    from trainer.models.host_weights import HostModel
    from trainer.models.ldm_write import unet_to_ldm, vae_to_ldm

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(bundled(family, "unet"))
        vae = AutoencoderKL.from_config(bundled(family, "vae"))
        clips = {"clip_l": CLIPTextModelWithProjection(CLIPTextConfig(**bundled(family, "text_encoder")))}
        if family == "sdxl":
            clips["clip_g"] = CLIPTextModelWithProjection(CLIPTextConfig(**bundled(family, "text_encoder_2")))
    text = {name: dict(m.state_dict()) for name, m in clips.items()}
    heads = {name: m.config.num_attention_heads for name, m in clips.items()}
    return HostModel(family, COMFY[family], unet_to_ldm(unet.state_dict(), unet.config), text,
                     vae_to_ldm(vae.state_dict(), vae.config), heads, 32, 32, 0.18215, str(tokenizer_dir), "meta")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_real_architectures_build_over_the_host_tensors(family, tmp_path):
    from trainer.models.host_weights import build_from_host
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    host = _meta_host(family, write_comfyui_sd1_tokenizer(tmp_path / "sd1_tokenizer"))
    model = build_from_host(host)
    assert model.host is not None and model.family.name == family
    expected = {"sd15": 686, "sdxl": 1680}[family]  # UNet weights of the real architectures
    assert sum(1 for _ in model.unet.parameters()) == len(host.unet) == expected
    ours = {"unet": model.unet, "vae": model.vae, "text_encoder": model.pipe.text_encoder}
    if family == "sdxl":
        ours["text_encoder_2"] = model.pipe.text_encoder_2
        assert model.unet.config.addition_time_embed_dim == 256
    for part, module in ours.items():
        for name, param in module.named_parameters():
            assert param.device.type == "meta" and not param.requires_grad, (part, name)
    assert model.vae.config.norm_num_groups == 32 and model.vae.config.latent_channels == 4


def test_a_host_with_fp8_weights_is_refused(tmp_path):
    from trainer.errors import TrainerError
    from trainer.models.host_weights import build_from_host
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    host = _meta_host("sd15", write_comfyui_sd1_tokenizer(tmp_path / "sd1_tokenizer"))
    host.unet = {k: v.to(torch.float8_e4m3fn) if v.ndim > 1 else v for k, v in host.unet.items()}
    with pytest.raises(TrainerError, match="weight_dtype"):
        build_from_host(host)


def test_inference_tensors_become_trainable_without_a_copy():
    from trainer.models.host_weights import trainable_view

    with torch.inference_mode():
        weight = torch.randn(8, 4)
        conv = torch.randn(8, 4, 1, 1)
    for tensor, view in ((weight, trainable_view(weight)), (conv, trainable_view(conv[:, :, 0, 0]))):
        assert tensor.is_inference() and not view.is_inference()
        assert view.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        x = torch.randn(2, 4, requires_grad=True)
        torch.nn.functional.linear(x, view).sum().backward()  # an inference tensor here would raise
        assert torch.equal(x.grad, view.sum(0).expand(2, 4))
