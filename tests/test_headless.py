"""A graph's training, moved to the CLI: the dataset manifest and the command LoRA Train shows."""

import json

import pytest

from trainer.data.dataset import load_dataset
from trainer.data.manifest import read_manifest, write_manifest
from trainer.errors import TrainerError
from test_nodes import comfy_dirs  # noqa: F401 - the fixture is used by name


def test_manifest_keeps_what_the_graph_changed(star_dataset, tmp_path):
    dataset = load_dataset(star_dataset, 1, "ltdemo")
    dataset.items[0].caption = "ltstar, edited in memory, ünïcode"
    dataset.items[1].source_size, dataset.items[1].source_crop = (96, 128), (16, 0)
    dataset.items[2].is_reg = True
    back = read_manifest(write_manifest(dataset, tmp_path / "run" / "d.jsonl"))
    assert back.items == dataset.items
    assert back.num_train_samples == dataset.num_train_samples and back.num_reg_images == 1


def test_manifest_names_missing_images_and_bad_lines(star_dataset, tmp_path):
    path = write_manifest(load_dataset(star_dataset), tmp_path / "d.jsonl")
    next(star_dataset.rglob("*.png")).unlink()
    with pytest.raises(TrainerError, match="1 images listed in .* are missing"):
        read_manifest(path)
    path.write_text(json.dumps({"caption": "no path"}) + "\n")
    with pytest.raises(TrainerError, match="line 1 is not a dataset entry"):
        read_manifest(path)


def test_lora_train_node_writes_a_run_the_cli_reproduces(pack, comfy_dirs):
    """Smart Crop + captions edited in memory, trained by the node; the command it shows trains
    the same LoRA headless."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from conftest import ROOT
    from graph_runner import run_graph
    from test_nodes import graph

    g = {k: v for k, v in graph(max_train_epochs=1).items() if k in ("1", "2", "3", "4")}
    g["8"] = {"class_type": "LT_SmartCrop", "inputs": {"dataset": ["2", 0], "mode": "focus", "size": "custom",
                                                        "custom_width": 64, "custom_height": 64}}
    g["9"] = {"class_type": "LT_CaptionEditor", "inputs": {"dataset": ["8", 0], "only_image": "", "write_files": False,
                                                            "edits": "trigger: ltstar"}}
    g["4"]["inputs"]["dataset"] = ["9", 0]
    node = pack.nodes.NODE_CLASS_MAPPINGS["LT_LoraTrain"]()
    inputs = {k: v for k, v in g["4"]["inputs"].items() if not isinstance(v, list)}
    upstream = run_graph(pack, {k: v for k, v in g.items() if k != "4"})
    out = node.train(pipeline=upstream["1"][0], dataset=upstream["9"][0], options=upstream["3"][0], **inputs)
    text = out["ui"]["text"][0]
    command = next(line.strip() for line in text.splitlines() if line.strip().startswith("python -m trainer"))
    toml = command.split('--config "')[1].rstrip('"')
    run_dir = comfy_dirs / "output" / "lora_trainer" / "stars"
    assert toml == str(run_dir / "stars.toml") and "torchrun --nproc_per_node" in text and "accelerate launch" in text
    assert "ltstar" in (run_dir / "stars_dataset.jsonl").read_text(encoding="utf-8")  # the in-memory edit
    headless = subprocess.run([sys.executable, "-m", "trainer", "train", "--config", toml, "--set",
                               f'output_dir="{comfy_dirs / "cli"}"', "--set", "save_precision=\"fp32\""],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert headless.returncode == 0, headless.stderr[-2000:]
    assert "done: 10 steps" in headless.stdout
    node_lora, cli_lora = out["result"][0].tensors, load_file(str(comfy_dirs / "cli" / "stars.safetensors"))
    assert node_lora.keys() == cli_lora.keys()
    assert max((node_lora[k].float() - cli_lora[k]).abs().max().item() for k in node_lora) <= 1e-6
