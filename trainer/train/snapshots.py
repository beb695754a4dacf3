"""Saving a run's files: the LoRA with its loss CSV and chart at the end, kohya's per-epoch saves
(``<name>-000003.safetensors``) keeping only the newest ``save_last_n_epochs``, kohya's step saves
(``<name>-step00000010.safetensors``) keeping those of the last ``save_last_n_steps`` steps, and
samples at kohya's moments."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

from ..errors import TrainerError
from ..lora.kohya_format import save_lora
from ..names import inside
from ..save_fallback import save_with_fallback
from .state import copy_state, epoch_state_dir, state_dir


def epoch_file(config, epoch: int) -> Path:
    return inside(config.output_dir, f"{config.output_name}-{epoch:06d}.safetensors")


def step_file(config, step: int) -> Path:
    return inside(config.output_dir, f"{config.output_name}-step{step:08d}.safetensors")


def save_step(lora, config, step: int, log=print, keep_state: Callable[[], object] | None = None) -> Path:
    """kohya's save_every_n_steps: the LoRA as <name>-step00000010.safetensors; step saves more than
    ``save_last_n_steps`` steps old are deleted (kohya's get_remove_step_no)."""
    path = save_epoch(lora, config, 0, log, keep_state, target=step_file(config, step), what=f"step {step} LoRA")
    if config.save_last_n_steps:
        remove_numbered(config, r"-step(\d{8})\.safetensors", step - config.save_last_n_steps - 1,
                        config.save_every_n_steps, log, f"save_last_n_steps={config.save_last_n_steps}")
    return path


def remove_old_step_states(config, step: int, log=print) -> None:
    """kohya: step states more than save_last_n_steps_state (else save_last_n_steps) steps old go."""
    keep = config.save_last_n_steps_state or config.save_last_n_steps
    if keep:
        remove_numbered(config, r"-step(\d{8})-state", step - keep - 1, config.save_every_n_steps, log,
                        f"save_last_n_steps{'_state' if config.save_last_n_steps_state else ''}={keep}")


def keep_epoch_state(config, epoch: int, log=print) -> None:
    """kohya's state of an epoch save (<name>-000002-state): the <name>-state just written, hard-
    linked; states older than the newest save_last_n_epochs_state (else save_last_n_epochs) go."""
    try:
        copy_state(state_dir(config), epoch_state_dir(config, epoch))
    except OSError as err:  # the run goes on: <name>-state holds the same
        log(f"note: epoch {epoch}'s state could not be kept as {epoch_state_dir(config, epoch).name} ({err}); "
            f"{state_dir(config).name} holds it")
        return
    keep = config.save_last_n_epochs_state or config.save_last_n_epochs
    if keep:
        every = config.save_every_n_epochs
        remove_numbered(config, r"-(\d{6})-state", epoch - keep * every, every, log,
                        f"save_last_n_epochs{'_state' if config.save_last_n_epochs_state else ''}={keep}")


def remove_numbered(config, pattern: str, last: int, every: int, log, why: str) -> None:
    """Delete this run's numbered saves (``<output_name>`` + ``pattern``, its group the number) at
    numbers from 1 to ``last`` that are multiples of ``every``: kohya deletes the one at the
    multiple of ``every`` at or below ``last`` as each new one is saved; a listing also finds the
    ones a resumed run with other settings left."""
    if last < 1 or not Path(config.output_dir).is_dir():
        return
    name = re.compile(re.escape(config.output_name) + pattern)
    for entry in sorted(Path(config.output_dir).iterdir()):
        match = name.fullmatch(entry.name)
        number = int(match.group(1)) if match else 0
        if 0 < number <= last and number % max(1, every) == 0:
            kind = "state" if entry.is_dir() else "save"
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            log(f"removed old {kind} {entry.name} ({why})")


def save_epoch(lora, config, epoch: int, log=print, keep_state: Callable[[], object] | None = None,
               target: Path | None = None, what: str = "") -> Path:
    """Save the epoch's LoRA (or, with ``target``, a step's); delete epoch saves older than the
    newest ``save_last_n_epochs``.

    When the save fails (a full disk) the LoRA goes to the temp folder, ``keep_state`` saves the
    training state (itself falling back to the temp folder), and the run stops saying where both are."""
    path, problem = save_with_fallback(lambda target: save_lora(lora, target, config.save_precision),
                                       target or epoch_file(config, epoch), config.output_name,
                                       what or f"epoch {epoch} LoRA")
    if problem:
        try:
            if keep_state is not None:
                keep_state()
        except TrainerError as err:
            raise TrainerError(f"{problem} {err}") from None
        resume = f', then continue with resume = "{state_dir(config)}"' if keep_state is not None else ""
        raise TrainerError(f"{problem} Training stopped: free some disk space (or choose another output_dir){resume}.")
    keep = config.save_last_n_epochs
    if keep and target is None:
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


def save_final(result, config) -> dict[str, Path]:
    """save_outputs(), then the sample prompts' images with the trained LoRA (the CLI's end of a run)."""
    files = save_outputs(result, config)
    if config.sample_prompts:
        from ..sample_prompts import write_samples

        files.update(write_samples(result.model, config, Path(config.output_dir) / "samples"))
    return files
