"""LoRA Train on ComfyUI's own MODEL/CLIP/VAE (CheckpointLoaderSimple, the comfy_core.py stand-in):
the trainer's modules share ComfyUI's tensors, training leaves them exactly as they were, and the
LoRA goes straight into core sampling through LoRA Apply, in the same graph."""

import shutil

import pytest
import torch

from graph_runner import comfy_services, run_graph

FAMILIES = ["sd15", "sdxl"]


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch, star_dataset):
    from trainer.tiny.build import write_tiny_checkpoint
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    models = tmp_path / "models"
    for family in FAMILIES:
        write_tiny_checkpoint(family, models / "checkpoints" / f"{family}.safetensors")
    (models / "loras").mkdir()
    shutil.copytree(star_dataset, tmp_path / "input" / "stars")
    tokenizer = write_comfyui_sd1_tokenizer(tmp_path / "comfy" / "sd1_tokenizer")
    for name, path in (("LT_MODELS_DIR", models), ("LT_INPUT_DIR", tmp_path / "input"),
                       ("LT_OUTPUT_DIR", tmp_path / "output"), ("LT_COMFY_TOKENIZER_DIR", tokenizer)):
        monkeypatch.setenv(name, str(path))
    yield tmp_path
    from comfy_standin import model_management

    model_management.unload_all_models()


def host_tensors(model, clip, vae) -> dict:
    return {**{f"model.{k}": v for k, v in model.model.state_dict().items()},
            **{f"clip.{k}": v for k, v in clip.cond_stage_model.state_dict().items()},
            **{f"vae.{k}": v for k, v in vae.first_stage_model.state_dict().items()}}


def snapshot(tensors: dict) -> dict:
    return {k: (v.untyped_storage().data_ptr(), v.clone()) for k, v in tensors.items()}


def changed(before: dict, after: dict) -> list:
    """Host tensors that moved or changed (ComfyUI never loads SD1.5's clip_l text_projection: NaN equals NaN)."""
    return [k for k in before if k not in after or before[k][0] != after[k].untyped_storage().data_ptr()
            or not torch.allclose(before[k][1], after[k], rtol=0, atol=0, equal_nan=True)]


def unchanged(before: dict, after: dict) -> bool:
    return before.keys() == after.keys() and not changed(before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_trainer_uses_comfyuis_tensors_not_a_copy(pack, comfy_dirs, family):
    from trainer.models.single_file import load_single_file

    loaded = run_graph(pack, {"1": {"class_type": "CheckpointLoaderSimple",
                                    "inputs": {"ckpt_name": f"{family}.safetensors"}}})["1"]
    with comfy_services(pack.nodes.comfy_env):
        from lt_pack.nodes.comfy_models import hosted_pipeline

        pipeline = hosted_pipeline(*loaded)
    storages = {v.untyped_storage().data_ptr() for v in host_tensors(*loaded).values()}
    ours = [pipeline.unet, pipeline.vae, *pipeline.text_encoders()]
    params = [p for module in ours for p in module.parameters()]
    assert params and all(p.untyped_storage().data_ptr() in storages for p in params)
    assert not any(p.is_inference() for p in params)  # trainable although ComfyUI made them in inference mode
    # the same numbers as the checkpoint loaded by our own single-file loader
    reference = load_single_file(comfy_dirs / "models" / "checkpoints" / f"{family}.safetensors",
                                 tokenizer_dir=comfy_dirs / "comfy" / "sd1_tokenizer")
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    context = torch.randn(1, 77, reference.unet.config.cross_attention_dim)
    extra = {}
    if family == "sdxl":
        pooled = reference.unet.config.projection_class_embeddings_input_dim - 6 * reference.unet.config.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}}
    with torch.no_grad():
        ours_out = pipeline.unet(x, t, context, **extra).sample
        ref_out = reference.unet(x, t, context, **extra).sample
        assert torch.allclose(ours_out, ref_out, atol=1e-5)
        pixels = torch.rand(1, 3, 64, 64) * 2 - 1
        assert torch.equal(pipeline.vae.encode(pixels).latent_dist.mean, reference.vae.encode(pixels).latent_dist.mean)
    # latents scaled as ComfyUI's own sampling scales them (SDXL 0.13025, whatever the tiny VAE's config says)
    assert pipeline.vae.config.scaling_factor == loaded[0].model.latent_format.scale_factor


def generate(strength: float | None, seed: int = 5) -> dict:
    """Nodes 10+: positive/negative from the (LoRA-applied) CLIP -> KSampler -> VAEDecode."""
    model, clip = (["20", 0], ["20", 1]) if strength is not None else (["1", 0], ["1", 1])
    graph = {
        "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "ltdemo, a yellow star"}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "blurry"}},
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {"model": model, "seed": seed, "steps": 3, "cfg": 4.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "positive": ["11", 0],
                                                     "negative": ["12", 0], "latent_image": ["13", 0], "denoise": 1.0}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["1", 2]}},
    }
    if strength is not None:
        graph["20"] = {"class_type": "LT_LoraApply", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora": ["4", 3],
                                                              "strength_model": strength, "strength_clip": strength}}
    return graph


def train_nodes(family: str, settings: str = "text_encoder_lr = 1e-3\n") -> dict:
    widgets = dict(preset="none", output_name="stars", resolution="64", network_dim=4, network_alpha=4.0,
                   learning_rate=1e-2, max_train_epochs=2, train_batch_size=4, mixed_precision="no",
                   gradient_checkpointing=True, seed=1)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{family}.safetensors"}},
        "2": {"class_type": "LT_DatasetLoader", "inputs": {"folder": "stars", "repeats": 1, "trigger_word": "ltdemo",
                                                            "caption_extension": ".txt"}},
        "3": {"class_type": "LT_TrainingOptions", "inputs": {"settings": settings}},
        "4": {"class_type": "LT_LoraTrain", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                        "dataset": ["2", 0], "options": ["3", 0], **widgets}},
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_train_then_generate_with_core_nodes_leaves_the_model_intact(pack, comfy_dirs, family):
    cache = {}  # ComfyUI's output cache: the loader's MODEL/CLIP/VAE are the same objects in every prompt
    base = {**train_nodes(family), **generate(None)}
    del base["2"], base["3"], base["4"]
    before = run_graph(pack, base, cache=cache)["15"][0]
    host_before = snapshot(host_tensors(*cache["1"][1]))

    trained = run_graph(pack, train_nodes(family), cache=cache)
    assert unchanged(host_before, host_tensors(*cache["1"][1]))  # every weight as it was, where it was
    graph = {**train_nodes(family), **generate(1.0)}
    out = run_graph(pack, graph, cache=cache)  # the same prompt plus sampling: training is not repeated
    assert out["4"] is trained["4"]
    lora, lora_model = out["4"][0], out["4"][3]
    assert any(k.startswith("lora_te") for k in lora_model)  # text_encoder_lr: the CLIP trained too
    with_lora = out["15"][0]
    assert not torch.equal(with_lora, before)
    # the base MODEL without the LoRA: bit-identical to before training
    assert torch.equal(run_graph(pack, base, cache=cache)["15"][0], before)
    # LoRA Apply at strength 0 is the base model; the CLIP really got the text-encoder LoRA at 1
    assert torch.equal(run_graph(pack, {**graph, **generate(0.0)}, cache=cache)["15"][0], before)
    patched_model, patched_clip = out["20"]
    assert patched_clip.patcher.patches and patched_model.patches
    assert not cache["1"][1][0].patches and not cache["1"][1][1].patcher.patches  # LoRA Apply clones
    assert set(lora_model) == set(lora.tensors)
    # the headless command names the checkpoint, found through the prompt
    toml = (comfy_dirs / "output" / "lora_trainer" / "stars" / "stars.toml").read_text(encoding="utf-8")
    assert f"{family}.safetensors" in toml


def test_a_failed_run_on_comfyuis_model_leaves_it_intact_and_queueing_again_works(pack, comfy_dirs):
    from lt_pack.trainer.errors import TrainerError

    cache = {}
    graph = train_nodes("sd15", settings="unet_lr = 1e30\n")  # the first step throws the LoRA to infinity
    run_graph(pack, {"1": graph["1"]}, cache=cache)
    host_before = snapshot(host_tensors(*cache["1"][1]))
    with pytest.raises(TrainerError) as failed:
        run_graph(pack, graph, cache=cache)
    assert "Loss became" in str(failed.value) and "\n" not in str(failed.value)
    assert unchanged(host_before, host_tensors(*cache["1"][1]))
    out = run_graph(pack, train_nodes("sd15"), cache=cache)  # fixed: same loader outputs, trains
    assert out["4"][3] and unchanged(host_before, host_tensors(*cache["1"][1]))


def test_a_model_with_a_lora_already_applied_is_refused(pack, comfy_dirs):
    from lt_pack.trainer.errors import TrainerError

    graph = train_nodes("sd15")
    graph["5"] = {"class_type": "LT_LoraTrain", "inputs": dict(graph["4"]["inputs"], output_name="first")}
    graph["20"] = {"class_type": "LT_LoraApply", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora": ["5", 3],
                                                          "strength_model": 1.0, "strength_clip": 1.0}}
    graph["4"]["inputs"].update(model=["20", 0], clip=["20", 1])  # LoRA Train after a LoRA was applied
    with pytest.raises(TrainerError, match="CheckpointLoaderSimple directly"):
        run_graph(pack, graph)



def test_the_pipeline_follows_comfyui_moving_its_weights(pack, comfy_dirs):
    """ComfyUI may offload and reload a model between nodes (new tensors). Binding lets go of the old
    ones before it asks ComfyUI for the model (so both never live at once) and points at the new."""
    from lt_pack.nodes.comfy_models import hosted_pipeline

    loaded = run_graph(pack, {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}}})["1"]
    with comfy_services(pack.nodes.comfy_env):
        pipeline = hosted_pipeline(*loaded)
    read, seen, moved = pipeline.host.read, [], {}

    def after_a_move():
        seen.append(all(p.device.type == "meta" for p in pipeline.unet.parameters()))
        host = read()
        host.unet = moved["unet"] = {k: v.clone() for k, v in host.unet.items()}  # as a reload makes them
        return host

    pipeline.host.read = after_a_move
    with comfy_services(pack.nodes.comfy_env):
        pipeline.host.bind()
    assert seen == [True]
    storages = {v.untyped_storage().data_ptr() for v in moved["unet"].values()}
    assert all(p.untyped_storage().data_ptr() in storages for p in pipeline.unet.parameters())
    pipeline.host.unbind()  # after a node: nothing of ComfyUI's stays referenced
    assert all(p.device.type == "meta" for m in (pipeline.unet, pipeline.vae) for p in m.parameters())
