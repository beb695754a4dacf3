"""Models reached through symlinks and extra model folders load through the loader node, as in
ComfyUI (which follows links); a model name that leaves its models folder is still refused."""

import os
import shutil

import pytest
import torch

from graph_runner import run_graph


@pytest.fixture
def linked(pack, tmp_path, monkeypatch, tiny_models):
    """models/ whose checkpoint and diffusers folder are symlinks to another drive, the checkpoint's
    target named like a hub cache blob (no .safetensors), plus a symlinked sub-folder of checkpoints."""
    from trainer.tiny.build import write_tiny_checkpoint
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    drive = tmp_path / "other_drive"
    blob = write_tiny_checkpoint("sd15", drive / "blob.safetensors").rename(drive / "3f9a0c5e1d")
    shutil.copytree(tiny_models("kolors"), drive / "Kolors-diffusers")
    write_tiny_checkpoint("sdxl", drive / "shared" / "TinySDXL.safetensors")
    models = tmp_path / "ComfyUI" / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "diffusers").mkdir()
    (models / "checkpoints" / "linked-sd15.safetensors").symlink_to(blob)
    (models / "checkpoints" / "shared").symlink_to(drive / "shared", target_is_directory=True)
    (models / "diffusers" / "LinkedKolors").symlink_to(drive / "Kolors-diffusers", target_is_directory=True)
    tokenizer = write_comfyui_sd1_tokenizer(tmp_path / "comfy" / "sd1_tokenizer")
    monkeypatch.setattr(pack.nodes.model, "comfy_tokenizer_dir", lambda: str(tokenizer))
    monkeypatch.setenv("LT_MODELS_DIR", str(models))
    return models


def load_graph(choice):
    return {"1": {"class_type": "LT_KolorsSDXLLoader", "inputs": {"model": choice, "family": "auto", "dtype": "fp32"}}}


def same_unet(a, b):
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("choice,family,target", [
    ("checkpoints/linked-sd15.safetensors", "sd15", "3f9a0c5e1d"),
    ("checkpoints/shared/TinySDXL.safetensors", "sdxl", "shared/TinySDXL.safetensors"),
    ("diffusers/LinkedKolors", "kolors", "Kolors-diffusers"),
])
def test_symlinked_models_are_listed_and_load_through_the_loader(pack, linked, tmp_path, choice, family, target):
    from trainer.models.loader import load_model

    menu = pack.nodes.NODE_CLASS_MAPPINGS["LT_KolorsSDXLLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choice in menu
    pipeline = run_graph(pack, load_graph(choice))["1"][0]
    assert pipeline.family.name == family
    assert pipeline.source == str(linked / choice)  # the link's own name: a blob target has no suffix
    original = tmp_path / "other_drive" / target
    if original.is_file():  # the same bytes as a plain file
        original = shutil.copy(original, tmp_path / "plain.safetensors")
    assert same_unet(pipeline, load_model(original, tokenizer_dir=pack.nodes.model.comfy_tokenizer_dir()))


def test_names_that_leave_the_models_folder_are_refused(pack, linked):
    from trainer.tiny.build import write_tiny_checkpoint

    env, TrainerError = pack.nodes.comfy_env, pack.trainer.errors.TrainerError
    outside = write_tiny_checkpoint("sd15", linked / "outside.safetensors")  # models/, not models/checkpoints
    for name in ["../outside.safetensors", "shared/../../outside.safetensors", str(outside), "", ".", "..",
                 "C:/outside.safetensors"]:
        assert env.full_path("checkpoints", name) is None, name
        with pytest.raises(TrainerError, match="not found"):
            pack.nodes.model.resolve_model(f"checkpoints/{name}")
    # names that stay inside may wander: "shared/../linked-sd15.safetensors" is models/checkpoints' own file
    found = env.full_path("checkpoints", "shared/../linked-sd15.safetensors")
    assert found == linked / "checkpoints" / "linked-sd15.safetensors"
    loader = pack.nodes.NODE_CLASS_MAPPINGS["LT_KolorsSDXLLoader"]()
    with pytest.raises(TrainerError, match="not found"):
        loader.load("checkpoints/../outside.safetensors", "auto", "fp32")


def test_a_link_loop_in_a_models_folder_does_not_hang_the_menu(pack, linked):
    (linked / "checkpoints" / "shared" / "again").symlink_to(linked / "checkpoints", target_is_directory=True)
    files = pack.nodes.comfy_env.list_files("checkpoints")
    assert "linked-sd15.safetensors" in files and "shared/TinySDXL.safetensors" in files


def test_extra_model_paths_are_searched_after_the_models_folder(pack, linked, tmp_path, monkeypatch, tiny_models):
    """ComfyUI's folder_paths gives several folders per kind (extra_model_paths.yaml): each is searched,
    the first that has the name wins."""
    import types

    extra = tmp_path / "a1111" / "models"
    shutil.copytree(tiny_models("sd15"), extra / "diffusers" / "ExtraSD15")
    (extra / "checkpoints").mkdir()
    shutil.copy(linked / "checkpoints" / "linked-sd15.safetensors", extra / "checkpoints" / "linked-sd15.safetensors")
    folders = {kind: [str(linked / kind), str(extra / kind)] for kind in ("checkpoints", "diffusers")}
    env = pack.nodes.comfy_env
    monkeypatch.setattr(env, "IN_COMFY", True)
    monkeypatch.setattr(env, "folder_paths", types.SimpleNamespace(
        models_dir=str(linked), get_folder_paths=lambda kind: folders[kind]))
    assert env.list_model_dirs("diffusers") == ["LinkedKolors", "ExtraSD15"]
    assert env.full_path("diffusers", "ExtraSD15") == extra / "diffusers" / "ExtraSD15"
    assert env.full_path("checkpoints", "linked-sd15.safetensors") == linked / "checkpoints" / "linked-sd15.safetensors"
    os.remove(linked / "checkpoints" / "linked-sd15.safetensors")
    assert env.full_path("checkpoints", "linked-sd15.safetensors") == extra / "checkpoints" / "linked-sd15.safetensors"
    pipeline = pack.nodes.NODE_CLASS_MAPPINGS["LT_KolorsSDXLLoader"]().load("diffusers/ExtraSD15", "auto", "fp32")[0]
    assert pipeline.family.name == "sd15" and pipeline.source == str(extra / "diffusers" / "ExtraSD15")


def test_a_diffusers_folder_keeps_its_own_tokenizer_over_comfyuis(tiny_models, tmp_path):
    """Kolors/SDXL Loader passes ComfyUI's comfy/sd1_tokenizer (the full 49408-token vocabulary) for
    single files; a diffusers folder's own tokenizer must still win: the tiny model's 514-token CLIP
    would index past its embedding table with ComfyUI's ids (found running it in a real ComfyUI)."""
    from trainer.models.loader import load_model
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    comfy_tokenizer = write_comfyui_sd1_tokenizer(tmp_path / "comfy" / "sd1_tokenizer")
    folder = tiny_models("sd15")
    model = load_model(folder, "sd15", tokenizer_dir=comfy_tokenizer)
    tokenizer = model.pipe.tokenizer
    assert len(tokenizer) <= model.pipe.text_encoder.config.vocab_size
    ids = tokenizer(["ltdemo, a yellow star"], return_tensors="pt").input_ids
    assert int(ids.max()) < model.pipe.text_encoder.config.vocab_size
    model.pipe.text_encoder(ids)  # ComfyUI's ids would raise IndexError here
