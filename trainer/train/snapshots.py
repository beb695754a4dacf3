"""Saving a run's files: the LoRA with its loss CSV and chart at the end, kohya's per-epoch saves
(``<name>-000003.safetensors``) keeping only the newest ``save_last_n_epochs``, and samples at
kohya's moments."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import TrainerError
from ..lora.kohya_format import save_lora
from ..names import inside
from ..save_fallback import save_with_fallback
from .state import state_dir


def epoch_file(config, epoch: int) -> Path:
    return inside(config.output_dir, f"{config.output_name}-{epoch:06d}.safetensors")


def save_epoch(lora, config, epoch: int, log=print, keep_state: Callable[[], object] | None = None) -> Path:
    """Save the epoch's LoRA; delete epoch saves older than the newest ``save_last_n_epochs``.

    When the save fails (a full disk) the LoRA goes to the temp folder, ``keep_state`` saves the
    training state (itself falling back to the temp folder), and the run stops saying where both are."""
    path, problem = save_with_fallback(lambda target: save_lora(lora, target, config.save_precision),
                                       epoch_file(config, epoch), config.output_name, f"epoch {epoch} LoRA")
    if problem:
        try:
            if keep_state is not None:
                keep_state()
        except TrainerError as err:
            raise TrainerError(f"{problem} {err}") from None
        resume = f', then continue with resume = "{state_dir(config)}"' if keep_state is not None else ""
        raise TrainerError(f"{problem} Training stopped: free some disk space (or choose another output_dir){resume}.")
    keep = config.save_last_n_epochs
    if keep:
        every = max(1, config.save_every_n_epochs)
        old = epoch - keep * every
        while old > 0:
            stale = epoch_file(config, old)
            if stale.is_file():
                stale.unlink()
                log(f"removed old save {stale.name} (save_last_n_epochs={keep})")
            old -= every
    return path


def wants_samples(config, step: int, epoch_end: int | None) -> bool:
    """kohya: sample every N steps, at the end of every N-th epoch, and optionally before step 1."""
    if not config.sample_prompts:
        return False
    if step == 0:
        return config.sample_at_first
    if epoch_end is not None:
        return bool(config.sample_every_n_epochs) and epoch_end % config.sample_every_n_epochs == 0
    return bool(config.sample_every_n_steps) and step % config.sample_every_n_steps == 0


def save_outputs(result, config) -> dict[str, Path]:
    """Write the LoRA, the loss CSV and the loss chart into ``config.output_dir``. A file that cannot
    be written there (a full disk) goes to the temp folder, and an error names both places."""
    from ..chart import write_loss_chart, write_loss_csv

    name = config.output_name
    writers = {"lora": ("LoRA", ".safetensors", lambda p: save_lora(result.lora, p, config.save_precision)),
               "loss_csv": ("loss CSV", "_loss.csv", lambda p: write_loss_csv(result.losses, p)),
               "loss_chart": ("loss chart", "_loss.png", lambda p: write_loss_chart(result.losses, p))}
    files, problems = {}, []
    for key, (what, suffix, write) in writers.items():
        files[key], problem = save_with_fallback(write, inside(config.output_dir, name + suffix), name, what)
        problems += [problem] if problem else []
    result.files.update(files)
    if problems:
        raise TrainerError(" ".join(problems) + " Free some disk space (or choose another output_dir) and move "
                           "them from there.")
    return files
