"""Exact resume: everything that decides the next step, saved as one folder.

    <output_dir>/<output_name>-state/
        lora.safetensors   the trainable LoRA tensors, fp32
        optimizer.pt       optimizer + lr schedule + loss-scaler state (plain tensors/numbers:
                           read back with weights_only=True, never executing pickled code)
        progress.json      step, epoch, batch position in the epoch, losses, config

The data order is a function of (seed, epoch), and the noise generator's state is saved, so a run
interrupted at step k and resumed ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import TrainerError
from ..names import inside
from ..save_fallback import save_with_fallback


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches already done in ``epoch``
    losses: list | None = None
    samples: int = 0  # items already done in ``epoch`` (all processes together)
    global_batch: int | None = None  # items per batch, all processes together, when saved


def batches_done(batches: list[list[int]], progress: Progress, global_batch: int) -> int:
    """How many of this epoch's batches the saved run had done. With the same global batch (batch
    x processes) that is the saved position, exactly; with another one, the batches whose items
    the saved run had covered (another process count regroups the epoch, so this is approximate)."""
    if progress.global_batch in (None, global_batch):
        return progress.position
    done, covered = 0, 0
    for batch in batches:
        if covered + len(batch) > progress.samples:
            break
        covered += len(batch)
        done += 1
    return done


def state_dir(config) -> Path:
    return inside(config.output_dir, f"{config.output_name}-state")


def epoch_state_dir(config, epoch: int) -> Path:
    """kohya's state of an epoch save (save_state with save_every_n_epochs)."""
    return inside(config.output_dir, f"{config.output_name}-{epoch:06d}-state")


def step_state_dir(config, step: int) -> Path:
    """kohya's state of a step save (save_state with save_every_n_steps)."""
    return inside(config.output_dir, f"{config.output_name}-step{step:08d}-state")


def copy_state(source: Path, folder: Path) -> Path:
    """``source`` (a state just written) as ``folder`` too, atomically. Hard links where the drive
    has them: the copy costs no space until ``source`` is replaced by the next state."""
    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        shutil.copytree(source, tmp, copy_function=link_or_copy, dirs_exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_state(folder: Path, params: dict, optimizer, lr_schedule, scaler, generator: torch.Generator,
               caption_rng, progress: Progress, config) -> Path:
    """Write the state folder atomically (a temp folder renamed over the old one). When that fails
    (a full disk), write it to the temp folder instead and stop with a message saying where."""
    def write(target: Path) -> Path:
        return _write_state(target, params, optimizer, lr_schedule, scaler, generator, caption_rng, progress, config)

    written, problem = save_with_fallback(write, folder, config.output_name, "training state")
    if problem:
        raise TrainerError(f"{problem} Free some disk space (or choose another output_dir), then continue "
                           f"with resume = \"{written}\".")
    return written


def _write_state(folder: Path, params: dict, optimizer, lr_schedule, scaler, generator: torch.Generator,
                 caption_rng, progress: Progress, config) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({name: p.detach().float().contiguous() for name, p in params.items()}, str(tmp / "lora.safetensors"))
        try:
            torch.save({"optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                        "generator": generator.get_state(), "caption_rng": caption_rng.getstate()},
                       tmp / "optimizer.pt")
        except RuntimeError as err:  # torch reports a failed write as "[enforce fail ...] unexpected pos"
            raise OSError(errno.EIO, f"torch.save could not write optimizer.pt ({err})") from err
        (tmp / "progress.json").write_text(json.dumps({
            "step": progress.step, "epoch": progress.epoch, "position": progress.position,
            "samples": progress.samples, "global_batch": progress.global_batch,
            "losses": progress.losses or [], "config": config.to_dict()}, indent=1), encoding="utf-8")
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_state(folder, params: dict, optimizer, lr_schedule, scaler, generator: torch.Generator,
               caption_rng) -> Progress:
    folder = Path(folder)
    needed = [folder / n for n in ("lora.safetensors", "optimizer.pt", "progress.json")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise TrainerError(f"Cannot resume from {folder}: {', '.join(missing)} missing. Point resume at a "
                           "<output_name>-state folder written by save_state or an interrupted run.")
    tensors = load_file(str(needed[0]))
    if set(tensors) != set(params):
        raise TrainerError(f"Cannot resume from {folder}: its LoRA does not match this run's network "
                           "(network_dim, conv_dim or model differ). Use the same settings or start fresh.")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])
    try:
        saved = torch.load(needed[1], weights_only=True, map_location="cpu")
    except Exception as err:  # an unpickling error names what it refused
        raise TrainerError(f"Cannot resume from {needed[1]}: {err}") from None
    optimizer.load_state_dict(saved["optimizer"])
    lr_schedule.load_state_dict(saved["lr_schedule"])
    if scaler.is_enabled() and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    generator.set_state(saved["generator"])
    version, internal, gauss = saved["caption_rng"]
    caption_rng.setstate((version, tuple(internal), gauss))
    info = json.loads(needed[2].read_text(encoding="utf-8"))
    return Progress(info["step"], info["epoch"], info["position"], info["losses"], info.get("samples", 0),
                    info.get("global_batch"))
