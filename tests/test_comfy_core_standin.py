"""The ComfyUI core stand-in (comfy_core*.py) hands nodes what ComfyUI a125cd84 does, checked against
names and numbers made independently of it: the checkpoint's own keys, transformers' CLIP models,
diffusers' UNet / converters and configs, and the LoRA formula worked out by hand."""

import logging

import pytest
import torch

import comfy_core as cc
from comfy_core_detect import UNET_PREFIX, VAE_PREFIX, embedded_configs, read_checkpoint
from comfy_standin import model_management as mm

FAMILIES = ["sd15", "sdxl"]
# ComfyUI's own buffers in BaseModel's state dict (comfy/model_sampling.py; SDXL's noise augmentor)
SAMPLING = {"model_sampling.sigmas", "model_sampling.log_sigmas"}
NOISE_AUG = {f"noise_augmentor.{n}" for n in (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from trainer.tiny.build import write_tiny_checkpoint
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    root = tmp_path_factory.mktemp("comfy_core")
    for family in FAMILIES:
        write_tiny_checkpoint(family, root / "models" / "checkpoints" / f"{family}.safetensors")
    write_comfyui_sd1_tokenizer(root / "sd1_tokenizer")
    return root


@pytest.fixture
def comfy_dirs(checkpoints, monkeypatch, tmp_path):
    monkeypatch.setenv("LT_MODELS_DIR", str(checkpoints / "models"))
    monkeypatch.setenv("LT_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("LT_COMFY_TOKENIZER_DIR", str(checkpoints / "sd1_tokenizer"))
    yield checkpoints
    mm.unload_all_models()


def load(family):
    return cc.CheckpointLoaderSimple().load_checkpoint(f"{family}.safetensors")


def file_tensors(root, family):
    return read_checkpoint(root / "models" / "checkpoints" / f"{family}.safetensors")


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_loader_hands_comfyui_names_and_inference_tensors(comfy_dirs, family):
    from trainer.tiny.build import build_tiny_parts
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model, clip, vae = load(family)
    sd, metadata = file_tensors(comfy_dirs, family)
    configs = embedded_configs(metadata)

    unet = model.model.state_dict()
    ldm = {"diffusion_model." + k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    assert set(unet) == set(ldm) | SAMPLING | (NOISE_AUG if family == "sdxl" else set())
    assert all(torch.equal(unet[k], v.float()) and unet[k].dtype == torch.float32 for k, v in ldm.items())
    assert "diffusion_model.input_blocks.1.0.in_layers.0.weight" in unet  # LDM names, not diffusers'

    # CLIP: transformers' own names under ComfyUI's prefixes, ComfyUI's two extras per tower
    def hf_names(state):  # with the text_model level real checkpoints have (transformers >= 5.6 drops it)
        return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
                for k, v in state.items() if not k.endswith("position_ids")}

    def hf(config, with_projection):
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        return set(hf_names(cls(CLIPTextConfig(**config)).state_dict()))

    expected = {"clip_l.transformer." + k for k in hf(configs["text_encoder"], False)}
    expected |= {"clip_l.transformer.text_projection.weight", "clip_l.logit_scale"}
    if family == "sdxl":
        expected |= {"clip_g.transformer." + k for k in hf(configs["text_encoder_2"], True)} | {"clip_g.logit_scale"}
    text = clip.cond_stage_model.state_dict()
    assert set(text) == expected
    # the same numbers as the diffusers text encoders the checkpoint was written from, in float16
    parts = build_tiny_parts(family, comfy_dirs / f"tok_{family}")
    towers = [("clip_l", parts["text_encoder"])] + ([("clip_g", parts["text_encoder_2"])] if family == "sdxl" else [])
    for tower, encoder in towers:
        for k, v in hf_names(encoder.state_dict()).items():
            assert torch.equal(text[f"{tower}.transformer.{k}"], v.half()), (tower, k)
    assert all(v.dtype == torch.float16 for k, v in text.items() if not k.endswith("logit_scale"))
    heads = {m.heads for m in clip.cond_stage_model.modules() if type(m).__name__ == "CLIPAttention"}
    assert heads == {configs["text_encoder"]["num_attention_heads"]}
    assert clip.tokenizer.clip_l.tokenizer.name_or_path == str(comfy_dirs / "sd1_tokenizer")
    assert clip.patcher.model is clip.cond_stage_model

    first_stage = vae.first_stage_model.state_dict()
    assert set(first_stage) == {k[len(VAE_PREFIX):] for k in sd if k.startswith(VAE_PREFIX)}
    assert first_stage["encoder.mid.attn_1.q.weight"].ndim == 4  # LDM keeps 1x1 convs
    assert vae.patcher.model is vae.first_stage_model

    for state in (unet, text, first_stage):
        assert all(t.is_inference() for t in state.values())

    # GroupNorm where ComfyUI's openaimodel / VAE have one, with the checkpoint's group count
    norms = {n: m for n, m in model.model.diffusion_model.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    expected_norms = {k[len("diffusion_model."):-len(".weight")] for k in unet if k.endswith(
        ("in_layers.0.weight", "out_layers.0.weight")) or k == "diffusion_model.out.0.weight"
        or k.endswith(".1.norm.weight")}
    assert set(norms) == expected_norms
    assert {m.num_groups for m in norms.values()} == {configs["unet"]["norm_num_groups"]}
    vae_norms = [m for m in vae.first_stage_model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(vae_norms) == sum(k.endswith("norm.weight") or ".norm1.weight" in k or ".norm2.weight" in k
                                 or k.endswith("norm_out.weight") for k in first_stage)
    assert {m.num_groups for m in vae_norms} == {configs["vae"]["norm_num_groups"]}

    base = model.model
    assert type(base.model_config).__name__ == family.upper()
    assert base.latent_format.scale_factor == {"sd15": 0.18215, "sdxl": 0.13025}[family]
    assert base.model_type.name == "EPS"
    assert model.patches == {} and model.load_device == torch.device("cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_config_matches_the_diffusers_config(comfy_dirs, family):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from comfy_core_lora import unet_module_map

    model, _, _ = load(family)
    sd, metadata = file_tensors(comfy_dirs, family)
    d = embedded_configs(metadata)["unet"]
    c = model.model.model_config.unet_config
    levels = len(d["block_out_channels"])
    assert [c["model_channels"] * m for m in c["channel_mult"]] == d["block_out_channels"]
    assert c["num_res_blocks"] == [d["layers_per_block"]] * levels
    assert c["context_dim"] == d["cross_attention_dim"]
    assert c["use_linear_in_transformer"] == d.get("use_linear_projection", False)
    assert c["adm_in_channels"] == d.get("projection_class_embeddings_input_dim")
    layers = d.get("transformer_layers_per_block", 1)
    layers = layers if isinstance(layers, list) else [layers] * levels
    per_block = [layers[i] if "CrossAttn" in t else 0 for i, t in enumerate(d["down_block_types"])]
    assert c["transformer_depth"] == [n for n in per_block for _ in range(d["layers_per_block"])]
    up = [layers[::-1][i] if "CrossAttn" in t else 0 for i, t in enumerate(d["up_block_types"])]
    assert c["transformer_depth_output"][::-1] == [n for n in up for _ in range(d["layers_per_block"] + 1)]
    assert c["transformer_depth_middle"] == layers[-1]
    assert c["dtype"] == torch.float32

    # heads as diffusers runs them, and the LoRA name map against diffusers' own converter
    reference = UNet2DConditionModel(**{k: v for k, v in d.items() if not k.startswith("_")})
    ours = sorted((m.heads, m.dim_head) for m in model.model.diffusion_model.modules()
                  if type(m).__name__ == "CrossAttention")
    theirs = sorted((m.heads, m.inner_dim // m.heads) for n, m in reference.named_modules()
                    if n.endswith(("attn1", "attn2")))
    assert ours == theirs
    converted = convert_ldm_unet_checkpoint(sd, d)
    state = model.model.state_dict()
    mapping = unet_module_map(c)
    weights = [k for k in reference.state_dict() if k.endswith(".weight")]
    assert weights and all(torch.equal(state["diffusion_model." + mapping[k[:-len(".weight")]] + ".weight"],
                                       converted[k]) for k in weights)


def encode(clip, text):
    return cc.CLIPTextEncode().encode(clip, text)[0]


def generate(model, clip, vae, seed=1, sampler="euler", scheduler="normal", size=64):
    with torch.inference_mode():
        positive, negative = encode(clip, "a yellow star"), encode(clip, "blurry")
        latent = cc.EmptyLatentImage().generate(size, size, 1)[0]
        samples = cc.KSampler().sample(model, seed, 3, 5.0, sampler, scheduler, positive, negative, latent)[0]
        return samples["samples"], cc.VAEDecode().decode(vae, samples)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_ksampler_runs_the_tiny_model_deterministically(comfy_dirs, family):
    model, clip, vae = load(family)
    latent, image = generate(model, clip, vae)
    assert latent.shape == (1, 4, 8, 8) and image.shape == (1, 64, 64, 3) and image.dtype == torch.float32
    assert torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1
    again, image_again = generate(model, clip, vae)
    assert torch.equal(again, latent) and torch.equal(image_again, image)
    other, _ = generate(model, clip, vae, seed=2, sampler="euler_ancestral", scheduler="karras")
    assert torch.isfinite(other).all() and not torch.equal(other, latent)
    with pytest.raises(NotImplementedError, match="stand-in"):
        generate(model, clip, vae, sampler="dpmpp_2m")


# (LoRA module name, the weight ComfyUI patches with it), per family: LDM and diffusers spellings, a conv, text towers
LORA_TARGETS = {
    "sd15": [("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
              "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"),
             ("lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_v",
              "diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_v.weight"),
             ("lora_unet_up_blocks_1_attentions_2_proj_out", "diffusion_model.output_blocks.5.1.proj_out.weight"),
             ("lora_unet_input_blocks_1_0_in_layers_2", "diffusion_model.input_blocks.1.0.in_layers.2.weight"),
             ("lora_te_text_model_encoder_layers_0_self_attn_q_proj",
              "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight")],
    "sdxl": [("lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k",
              "diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_k.weight"),
             ("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2",
              "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"),
             ("lora_unet_up_blocks_0_attentions_2_transformer_blocks_1_attn2_to_out_0",
              "diffusion_model.output_blocks.2.1.transformer_blocks.1.attn2.to_out.0.weight"),
             ("lora_te1_text_model_encoder_layers_4_mlp_fc1",
              "clip_l.transformer.text_model.encoder.layers.4.mlp.fc1.weight"),
             ("lora_te2_text_model_encoder_layers_3_self_attn_out_proj",
              "clip_g.transformer.text_model.encoder.layers.3.self_attn.out_proj.weight")],
}


def kohya_lora(targets, weights, up_scale, rank=2, alpha=1.0):
    g = torch.Generator().manual_seed(5)
    lora = {}
    for name, key in targets:
        w = weights[key]
        out, rest = w.shape[0], w.shape[1:]
        lora[f"{name}.lora_down.weight"] = torch.randn(rank, *rest, generator=g) * 0.3
        lora[f"{name}.lora_up.weight"] = torch.randn(out, rank, *([1] * (len(rest) - 1)), generator=g) * up_scale
        lora[f"{name}.alpha"] = torch.tensor(alpha)
    return lora


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_patches_clones_and_leaves_the_original_intact(comfy_dirs, family, caplog):
    model, clip, vae = load(family)
    weights = {**model.model.state_dict(), **clip.cond_stage_model.state_dict()}
    originals = {k: (v.clone(), v.data_ptr()) for k, v in weights.items()}
    targets = LORA_TARGETS[family]
    base_latent, base_image = generate(model, clip, vae)
    base_cond = encode(clip, "a yellow star")[0][0]

    zero = kohya_lora(targets, weights, up_scale=0.0)
    zero["lora_unet_no_such_module.lora_up.weight"] = torch.zeros(1)
    with caplog.at_level(logging.WARNING):
        m0, c0 = cc.comfy_sd.load_lora_for_models(model, clip, zero, 1.0, 1.0)
    assert "lora key not loaded: lora_unet_no_such_module.lora_up.weight" in caplog.text
    assert set(m0.patches) | set(c0.patcher.patches) == {key for _, key in targets}
    assert model.patches == {} and clip.patcher.patches == {} and m0.model is model.model
    latent0, image0 = generate(m0, c0, vae)
    assert torch.equal(latent0, base_latent) and torch.equal(image0, base_image)

    strength = 0.7
    lora = kohya_lora(targets, weights, up_scale=0.2)
    m1, c1 = cc.comfy_sd.load_lora_for_models(model, clip, lora, strength, strength)
    latent1, _ = generate(m1, c1, vae)
    assert not torch.equal(latent1, base_latent)
    assert not torch.equal(encode(c1, "a yellow star")[0][0], base_cond)
    # the weights ComfyUI patches in: W + strength * alpha / rank * up @ down, in the weight's dtype
    for name, key in targets:
        holder = model.model if key.startswith("diffusion_model.") else clip.cond_stage_model
        w = originals[key][0]
        up, down = lora[f"{name}.lora_up.weight"].flatten(1), lora[f"{name}.lora_down.weight"].flatten(1)
        want = (w.float() + strength * 0.5 * (up @ down).reshape(w.shape)).to(w.dtype)
        assert torch.allclose(holder.state_dict()[key].float(), want.float(), atol=1e-3), key
    # as in ComfyUI the shared module stays patched until another patcher loads: the original then
    # gets its own weights back (same storage), and its images are bit-identical to before
    patched_key = targets[0][1]
    assert not torch.equal(model.model.state_dict()[patched_key], originals[patched_key][0])
    latent_after, image_after = generate(model, clip, vae)
    assert torch.equal(latent_after, base_latent) and torch.equal(image_after, base_image)
    mm.unload_all_models()
    assert [entry for entry in mm.current_loaded_models if entry.model is not None] == []
    for k, v in {**model.model.state_dict(), **clip.cond_stage_model.state_dict()}.items():
        if not k.endswith("text_projection.weight") or k.startswith("clip_g"):
            assert torch.equal(v, originals[k][0]), k
        assert v.data_ptr() == originals[k][1] and v.is_inference(), k


def test_graphs_mix_core_and_pack_nodes(pack, comfy_dirs, tmp_path):
    """The runner's core nodes, ComfyUI's union link types, SaveImage's ui and SaveLoRANode's file."""
    from graph_runner import link_fits, run_graph
    from workflow_format import ui_to_api

    assert link_fits("LORA_MODEL", "LT_LORA,LORA_MODEL") and link_fits("LT_LORA,LORA_MODEL", "LORA_MODEL")
    assert not link_fits("MODEL", "LT_LORA,LORA_MODEL")
    workflow = {"links": [[1, 1, 0, 3, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 2, 0, 3, 1, "CONDITIONING"],
                          [4, 2, 0, 3, 2, "CONDITIONING"], [5, 4, 0, 3, 3, "LATENT"], [6, 3, 0, 5, 0, "LATENT"],
                          [7, 1, 2, 5, 1, "VAE"], [8, 5, 0, 6, 0, "IMAGE"]],
                "nodes": [{"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["sd15.safetensors"]},
                          {"id": 2, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 2}],
                           "widgets_values": ["a star"]},
                          {"id": 3, "type": "KSampler", "inputs": [
                              {"name": "model", "link": 1}, {"name": "positive", "link": 3},
                              {"name": "negative", "link": 4}, {"name": "latent_image", "link": 5}],
                           "widgets_values": [7, "randomize", 2, 3.0, "euler", "karras", 1.0]},
                          {"id": 4, "type": "EmptyLatentImage", "widgets_values": [64, 64, 1]},
                          {"id": 5, "type": "VAEDecode", "inputs": [{"name": "samples", "link": 6},
                                                                     {"name": "vae", "link": 7}]},
                          {"id": 6, "type": "SaveImage", "inputs": [{"name": "images", "link": 8}],
                           "widgets_values": ["sub/test"]}]}
    api = ui_to_api(workflow, pack.nodes.NODE_CLASS_MAPPINGS)
    assert api["3"]["inputs"]["seed"] == 7 and api["3"]["inputs"]["steps"] == 2  # the control value skipped
    assert "randomize" not in str(api)
    ui = {}
    run_graph(pack, api, ui=ui)
    assert ui["6"]["images"] == [{"filename": "test_00001_.png", "subfolder": "sub", "type": "output"}]
    assert (tmp_path / "output" / "sub" / "test_00001_.png").is_file()
    cc.SaveLoRA().save({"x.lora_up.weight": torch.zeros(2, 2)}, "loras/trained", steps=3)
    assert (tmp_path / "output" / "loras" / "trained_3_steps_00001_.safetensors").is_file()
