"""Every bundled workflow: ComfyUI's UI format, valid against the nodes (link types, widget
values and bounds), and runs end to end on tiny models (model names and sizes swapped)."""

import json
import shutil

import pytest
import torch

from conftest import ROOT
from graph_runner import validate_input
from workflow_format import is_widget, ui_to_api

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
REQUIRED = {"kolors_example.json", "kolors_lora_example.json", "kolors_train_then_generate.json",
            "sdxl_train_then_generate.json", "sd15_train_then_generate.json", "dataset_prep.json",
            "character_with_style.json"}


def test_the_bundled_set_is_complete():
    assert REQUIRED <= {p.name for p in WORKFLOWS}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_nodes(pack, path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(workflow)
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    assert notes and "models/" in notes[0]["widgets_values"][0]  # says which files go where
    from graph_runner import link_fits, node_class

    api = ui_to_api(workflow, pack.nodes.NODE_CLASS_MAPPINGS)
    for node_id, node in api.items():
        cls = node_class(pack, node["class_type"])  # the pack's, or ComfyUI core's (comfy_core.py)
        types = cls.INPUT_TYPES()
        specs = {**types["required"], **types.get("optional", {})}
        assert set(types["required"]) <= set(node["inputs"]), node["class_type"]
        for name, value in node["inputs"].items():
            spec = specs[name]
            if isinstance(value, list):
                source = node_class(pack, api[value[0]]["class_type"])
                assert link_fits(source.RETURN_TYPES[value[1]], spec[0]), (node["class_type"], name)
            elif is_widget(spec) and not isinstance(spec[0], list):
                validate_input(cls, name, spec, value)
            elif isinstance(spec[0], list) and name not in ("model", "tagger", "lora_name", "ckpt_name"):
                assert value in spec[0], (node["class_type"], name, value)  # file lists depend on the user


@pytest.fixture
def user_dirs(pack, tmp_path, monkeypatch, tiny_models, star_dataset):
    import sys

    models = tmp_path / "models"
    for family, name in (("kolors", "Kolors"), ("sdxl", "TinySDXL"), ("sd15", "TinySD15")):
        shutil.copytree(tiny_models(family), models / "diffusers" / name)
    for sub in ("loras", "vae", "checkpoints"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    # single files as ComfyUI users have them, with ComfyUI's own tokenizer folder (8192 in its config)
    from trainer.tiny.build import write_tiny_checkpoint
    from trainer.tiny.tokenizers import write_comfyui_sd1_tokenizer

    for family, name in (("sdxl", "TinySDXL"), ("sd15", "TinySD15")):
        write_tiny_checkpoint(family, models / "checkpoints" / f"{name}.safetensors")
    comfy_tokenizer = write_comfyui_sd1_tokenizer(tmp_path / "comfy" / "sd1_tokenizer")
    monkeypatch.setattr(pack.nodes.model, "comfy_tokenizer_dir", lambda: str(comfy_tokenizer))
    monkeypatch.setenv("LT_COMFY_TOKENIZER_DIR", str(comfy_tokenizer))  # core CheckpointLoaderSimple's (comfy_core.py)
    shutil.copytree(star_dataset, tmp_path / "input" / "lora_dataset")
    sys.path.insert(0, str(ROOT / "tests"))
    from test_tagger_wd14 import TAGS, StandIn

    tagger = models / "wd14_tagger" / "standin"
    tagger.mkdir(parents=True)
    torch.onnx.export(StandIn(), torch.zeros(1, 448, 448, 3), str(tagger / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "n"}})
    (tagger / "selected_tags.csv").write_text("\n".join(["tag_id,name,category,count"] +
                                                       [f"{i},{n},{c},1" for i, n, c in TAGS]) + "\n")
    for name, path in (("LT_MODELS_DIR", models), ("LT_INPUT_DIR", tmp_path / "input"),
                       ("LT_OUTPUT_DIR", tmp_path / "output")):
        monkeypatch.setenv(name, str(path))
    return tmp_path


def shrink(api: dict, model: str, lora_file: str | None) -> dict:
    """Swap real model names for tiny ones and sizes for 64 px (the graph itself stays as shipped)."""
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "LT_KolorsSDXLLoader":
            inputs.update(model=model, dtype="fp32")
        elif kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = model
        elif kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "KSampler":
            inputs["steps"] = 3
        elif kind == "LT_AutoTagger":
            inputs["tagger"] = "wd14/standin"
        elif kind == "LT_LoraLoad" and lora_file:
            inputs["lora_name"] = lora_file
        elif kind == "LT_SmartCrop":
            inputs.update(size="custom", custom_width=64, custom_height=64)
        elif kind == "LT_LoraTrain":
            inputs.update(preset="none", resolution="64", max_train_epochs=1, train_batch_size=4, mixed_precision="no",
                          sample_prompt="")
        elif kind == "LT_SamplerPreview":
            inputs.update(width=64, height=64, steps=3)
        elif kind == "LT_DatasetReport":
            inputs.update(resolution=64)
    return api


@pytest.mark.parametrize("name,model", [("kolors_example.json", "diffusers/Kolors"),
                                        ("kolors_lora_example.json", "diffusers/Kolors"),
                                        ("kolors_train_then_generate.json", "diffusers/Kolors"),
                                        ("sdxl_train_then_generate.json", "TinySDXL.safetensors"),
                                        ("sd15_train_then_generate.json", "TinySD15.safetensors"),
                                        ("dataset_prep.json", "diffusers/Kolors"),
                                        ("character_with_style.json", "diffusers/TinySDXL")])
def test_workflow_runs_on_tiny_models(pack, user_dirs, name, model):
    from graph_runner import run_graph

    lora = None
    if name == "kolors_lora_example.json":  # seed 001's DiffSynth checkpoint, built here
        from lora_builders import diffsynth_state, unet_lora
        from trainer.models.loader import load_model

        unet = load_model(user_dirs / "models" / "diffusers" / "Kolors").unet
        state = diffsynth_state(unet_lora(unet, "kolors", conv=False, seed=1), dict(unet.config))
        lora = "epoch=0-step=500.ckpt"
        torch.save({"state_dict": state, "epoch": 0, "global_step": 500}, user_dirs / "models" / "loras" / lora)
    if name == "character_with_style.json":  # its second Dataset Loader's folder: a painted style
        from conftest import paint

        for i in range(3):
            paint(user_dirs / "input" / "style_dataset" / f"{i}.png", colour=(20 * i, 120, 60), box=(8, 8, 24, 56))
    workflow = json.loads((ROOT / "workflows" / name).read_text(encoding="utf-8"))
    api = shrink(ui_to_api(workflow, pack.nodes.NODE_CLASS_MAPPINGS), model, lora)
    ui = {}
    outputs = run_graph(pack, api, ui=ui)
    assert outputs
    if any(node["class_type"] == "CheckpointLoaderSimple" for node in api.values()):
        # strength 0 beside strength 1, same seed, in one picture: the LoRA visibly changes it
        from PIL import Image

        saved = [image for node_id, out in ui.items() if api[node_id]["class_type"] == "SaveImage"
                 for image in out["images"]]
        assert len(saved) == 1
        picture = Image.open(user_dirs / "output" / saved[0]["subfolder"] / saved[0]["filename"])
        assert picture.size == (128, 64)
        left, right = (torch.tensor(list(picture.crop(box).getdata()), dtype=torch.float32)
                       for box in ((0, 0, 64, 64), (64, 0, 128, 64)))
        assert (left - right).abs().mean() > 0.05  # measured 0.15 (SD1.5) and 0.21 (SDXL) on the tiny models
