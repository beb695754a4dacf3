"""A full drive for CLI tests: the CLI runs in its own process with writes into one folder failing
the way they fail on a full disk (safetensors: OSError ENOSPC; torch.save: torch's RuntimeError),
or with ``shutil.disk_usage`` reporting little free space there. The system temp folder is
redirected so each test sees its own fallback folder."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, paint

PRELUDE = r"""
import errno, json, shutil, sys, tempfile
from pathlib import Path

full, temp, fail, free = sys.argv[1:5]
del sys.argv[1:5]
full = Path(full).resolve()
tempfile.tempdir = temp

def on_full_drive(path):
    return Path(path).resolve().is_relative_to(full)

if "safetensors" in fail:
    import safetensors.torch
    real_save_file = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if on_full_drive(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, filename, metadata=metadata)

    safetensors.torch.save_file = save_file
    import trainer.train.state
    trainer.train.state.save_file = save_file
if "torch" in fail:
    import torch
    real_torch_save = torch.save

    def torch_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, Path)) and on_full_drive(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_torch_save(obj, f, *args, **kwargs)

    torch.save = torch_save
if free:
    real_disk_usage = shutil.disk_usage

    def disk_usage(path):
        usage = real_disk_usage(path)
        if on_full_drive(path):
            return usage._replace(free=int(free))
        return usage

    shutil.disk_usage = disk_usage

from trainer.cli import main
sys.exit(main())
"""


def cli_on_full_drive(full: Path, temp: Path, *args, fail: str = "", free: int | None = None):
    """``python -m trainer *args`` where writes under ``full`` fail (``fail``: "safetensors",
    "torch" or both) or where ``full``'s drive reports ``free`` bytes."""
    command = [sys.executable, "-c", PRELUDE, str(full), str(temp), fail, "" if free is None else str(free)]
    return subprocess.run(command + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def small_run(tmp_path: Path, model: Path, **settings) -> Path:
    """Two painted images (one step per epoch at batch 2) and a run.toml training on them."""
    data = tmp_path / "data"
    for i in range(2):
        paint(data / f"{i}.png", colour=(200, 60 * i, 0))
        (data / f"{i}.txt").write_text("ltdemo, a square")
    values = dict(pretrained_model_name_or_path=str(model), train_data_dir=str(data),
                  output_dir=str(tmp_path / "out"), output_name="star", resolution="64", network_dim=2,
                  train_batch_size=2, max_train_epochs=2, learning_rate=1e-3)
    values.update(settings)
    config = tmp_path / "run.toml"
    config.write_text("".join(f"{key} = {toml(value)}\n" for key, value in values.items()))
    return config


def toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\") + '"'
