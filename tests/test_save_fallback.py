"""A save that fails on a full disk keeps the work: the LoRA (and state) go to the temp folder, the
message names both places, and the CLI exits non-zero without a traceback."""

import errno
import json
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from full_disk import cli_on_full_drive, small_run
from test_cli import cli
from trainer.errors import TrainerError
from trainer.save_fallback import save_with_fallback


def lora_keys(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_final_save_goes_to_the_temp_folder(tiny_models, tmp_path):
    out, temp = tmp_path / "out", tmp_path / "system_temp"
    temp.mkdir()
    run = cli_on_full_drive(out, temp, "train", "--config", small_run(tmp_path, tiny_models("sd15")),
                            fail="safetensors")
    kept = temp / "lora_trainer-star" / "star.safetensors"
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    message = run.stderr.strip().splitlines()[-1]
    assert message.startswith("error: Could not write the LoRA") and "No space left on device" in message
    assert str(out / "star.safetensors") in message and str(kept) in message
    assert not (out / "star.safetensors").exists()
    assert any(k.endswith("lora_down.weight") for k in lora_keys(kept))  # the trained LoRA, loadable
    assert (out / "star_loss.csv").is_file()  # what could be written stayed where it belongs


def test_epoch_save_keeps_lora_and_state_and_the_run_resumes_from_them(tiny_models, tmp_path):
    out, temp = tmp_path / "out", tmp_path / "system_temp"
    temp.mkdir()
    model = tiny_models("sd15")
    config = small_run(tmp_path, model, save_every_n_epochs=1)
    run = cli_on_full_drive(out, temp, "train", "--config", config, fail="safetensors")
    kept = temp / "lora_trainer-star"
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    for path in (out / "star-000001.safetensors", kept / "star-000001.safetensors", out / "star-state",
                 kept / "star-state"):
        assert str(path) in run.stderr
    assert f'resume = "{kept / "star-state"}"' in run.stderr
    assert lora_keys(kept / "star-000001.safetensors")
    assert json.loads((kept / "star-state" / "progress.json").read_text())["step"] == 1
    assert not (out / "star-000001.safetensors").exists() and not (out / "star.safetensors").exists()

    # once there is space again, the run continues from the kept state and does only the rest
    resumed = cli("train", "--config", config, "--set", f'resume="{kept / "star-state"}"')
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "done: 2 steps" in resumed.stdout
    assert lora_keys(out / "star.safetensors") == lora_keys(kept / "star-000001.safetensors")


def test_state_save_failing_in_torch_save_keeps_the_state(tiny_models, tmp_path):
    out, temp = tmp_path / "out", tmp_path / "system_temp"
    temp.mkdir()
    run = cli_on_full_drive(out, temp, "train", "--config", small_run(tmp_path, tiny_models("sd15"), save_state=True),
                            fail="torch")
    kept = temp / "lora_trainer-star" / "star-state"
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "error: Could not write the training state" in run.stderr and "torch.save could not write" in run.stderr
    assert str(out / "star-state") in run.stderr and f'resume = "{kept}"' in run.stderr
    assert sorted(p.name for p in kept.iterdir()) == ["lora.safetensors", "optimizer.pt", "progress.json"]
    assert not (out / "star-state").exists() and not list(out.glob(".star-state.*"))  # no half-written folder


def test_fallback_that_fails_too_says_nothing_was_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(TrainerError, match="nothing of it was saved") as err:
        save_with_fallback(full, tmp_path / "out" / "x.safetensors", "x", "LoRA")
    assert str(tmp_path / "out" / "x.safetensors") in str(err.value)
    assert str(tmp_path / "temp" / "lora_trainer-x" / "x.safetensors") in str(err.value)


def test_lora_save_node_keeps_the_lora(pack, tmp_path, monkeypatch):
    import safetensors.torch

    from trainer.lora.kohya_format import TrainedLora

    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    monkeypatch.setenv("LT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if loras in Path(filename).parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    lora = TrainedLora({"lora_unet_x.lora_down.weight": torch.ones(2, 4),
                        "lora_unet_x.lora_up.weight": torch.ones(4, 2), "lora_unet_x.alpha": torch.tensor(2.0)},
                       {"ss_network_dim": "2"})
    with pytest.raises(pack.trainer.errors.TrainerError) as err:  # the pack's own copy of the class
        pack.nodes.lora.LoraSave().save(lora, "中文角色", "fp16", False)
    kept = tmp_path / "temp" / "lora_trainer-中文角色" / "中文角色.safetensors"
    assert str(loras / "中文角色.safetensors") in str(err.value) and str(kept) in str(err.value)
    assert lora_keys(kept) == set(lora.tensors)
