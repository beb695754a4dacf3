"""The CLI as a user runs it: train from TOML, sample with the LoRA, one-line errors."""

import subprocess
import sys
from pathlib import Path

from PIL import Image
from safetensors import safe_open

from conftest import ROOT


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=600)


def test_train_from_toml_then_sample(tiny_models, star_dataset, tmp_path):
    model = tiny_models("sdxl")
    config = tmp_path / "run.toml"
    config.write_text(
        f'pretrained_model_name_or_path = "{model}"\ntrain_data_dir = "{star_dataset}"\n'
        f'output_dir = "{tmp_path / "out"}"\noutput_name = "star"\n'
        '[network_arguments]\nnetwork_dim = 4\nnetwork_alpha = 2\n'
        '[training]\nresolution = "64"\nmax_train_epochs = 1\ntrain_batch_size = 4\nlearning_rate = 1e-3\n'
        'sample_prompts = ["ltdemo --d 3 --s 4 --w 64 --h 64"]\n')
    run = cli("train", "--config", config, "--set", "max_train_epochs=2")
    assert run.returncode == 0, run.stderr
    assert "done: 20 steps" in run.stdout  # 4 images x 10 repeats x 2 epochs / batch 4
    out = tmp_path / "out"
    with safe_open(str(out / "star.safetensors"), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4" and f.metadata()["ss_num_epochs"] == "2"
    assert len((out / "star_loss.csv").read_text().splitlines()) == 21
    assert Image.open(out / "star_loss.png").size == (640, 360)
    assert Image.open(out / "samples" / "star_sample_00.png").size == (64, 64)
    assert "step" in run.stderr  # the progress bar

    sample = cli("sample", "--model", model, "--lora", out / "star.safetensors", "--prompt", "ltdemo",
                 "--steps", 3, "--width", 64, "--height", 64, "--sampler", "dpmpp_2m_karras",
                 "--out", tmp_path / "s.png")
    assert sample.returncode == 0, sample.stderr
    assert Image.open(tmp_path / "s.png").size == (64, 64)


def test_errors_are_one_line_without_traceback(tmp_path):
    run = cli("train", "--set", f'train_data_dir="{tmp_path}"', "--set", 'pretrained_model_name_or_path="x"')
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: No training images in")
    assert "Traceback" not in run.stderr
    missing = cli("sample", "--model", tmp_path / "nope", "--prompt", "x")
    assert missing.returncode == 2 and "Model not found" in missing.stderr


def test_demo_runs_end_to_end(tmp_path):
    run = cli("demo", "--out", tmp_path / "demo", "--epochs", 1, "--pretrain-steps", 2, "--family", "sd15")
    assert run.returncode == 0, run.stderr
    for name in ("lora", "loss_chart", "sample_before", "sample_after", "before_after"):
        line = next(l for l in run.stdout.splitlines() if l.strip().startswith(name + " "))
        assert Path(line.split()[-1]).is_file()
