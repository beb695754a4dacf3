"""kohya's experiment logging (log_with, logging_dir, log_prefix): TensorBoard event files with the
scalars kohya's train_network.py logs, in the folder kohya's accelerate set-up names:

    <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/network_train/events.out.tfevents...

per step: ``loss/current``, ``loss/average`` (the mean over the last epoch's steps), ``lr/unet``,
``lr/textencoder`` (and ``lr/d*lr/...`` for D-Adaptation / Prodigy); per epoch:
``loss/epoch_average`` and, with a validation split, ``loss/validation/epoch_average`` and
``loss/validation/epoch_divergence``. TensorBoard is optional: without it, one note and the run
goes on (the loss CSV and chart are written anyway)."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import TrainerError

RUN_NAME = "network_train"  # kohya's tracker name for train_network.py
CHOICES = ("tensorboard", "wandb", "all")


def check_logging(config) -> None:
    """kohya's refusals, made before anything loads."""
    if config.log_with and config.log_with not in CHOICES:
        raise TrainerError(f"log_with '{config.log_with}' is not one of {', '.join(CHOICES)}.")
    if config.log_with in ("tensorboard", "all") and not config.logging_dir:
        raise TrainerError(f'log_with = "{config.log_with}" needs logging_dir (kohya\'s rule): set logging_dir = '
                           '"logs" (the event files go to <logging_dir>/<log_prefix><date>/network_train).')


def wants_tensorboard(config) -> bool:
    """kohya: log_with tensorboard or all; with no log_with, a logging_dir alone means tensorboard."""
    return config.log_with in ("tensorboard", "all") or (not config.log_with and bool(config.logging_dir))


def log_folder(config, started: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(started if started is not None else time.time()))
    return Path(config.logging_dir) / f"{config.log_prefix}{stamp}" / RUN_NAME


def group_names(optimizer, network) -> list[str]:
    """kohya's lr names per optimizer group: "unet", "textencoder" (its SDXL text encoders share one)."""
    unet = {id(p) for name, p in network.trainable.items() if name.startswith("unet.")}
    return ["unet" if group["params"] and id(group["params"][0]) in unet else "textencoder"
            for group in optimizer.param_groups]


class Tracker:
    """The run's TensorBoard writer, or nothing; a context that closes the event file however the
    run ends."""

    def __init__(self, writer=None, names: list[str] | None = None, folder: Path | None = None):
        self.writer, self.names, self.folder = writer, names or [], folder
        self.window: list[float] = []  # this epoch's step losses over the last epoch's (kohya's LossRecorder)
        self.at: tuple[int, int] = (-1, 0)  # (epoch, steps done in it)

    @classmethod
    def open(cls, config, optimizer, network, log, started: float | None = None) -> "Tracker":
        if config.log_with in ("wandb", "all"):
            part = "the wandb part of log_with = \"all\"" if config.log_with == "all" else "log_with = \"wandb\""
            log(f"note: {part} is not supported here (no Weights & Biases upload); the loss chart, loss CSV "
                "and progress are written as always")
        if not wants_tensorboard(config):
            return cls()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("note: TensorBoard logging needs the tensorboard package, which is not installed: "
                "pip install tensorboard. Training goes on without event files.")
            return cls()
        folder = log_folder(config, started)
        log(f"TensorBoard event files: {folder}")
        return cls(SummaryWriter(str(folder)), group_names(optimizer, network), folder)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()

    @property
    def average(self) -> float:
        return sum(self.window) / len(self.window) if self.window else 0.0

    def step(self, step: int, epoch: int, loss: float, optimizer, lr_schedule, extra: dict | None = None) -> None:
        """One optimizer step's scalars; the lrs are those of the next step, as kohya logs them."""
        if self.writer is None:
            return
        done = self.at[1] if self.at[0] == epoch else 0
        if done < len(self.window):
            self.window[done] = loss
        else:
            self.window.append(loss)
        self.at = (epoch, done + 1)
        values = {"loss/current": loss, "loss/average": self.average, **(extra or {})}
        lrs = lr_schedule.get_last_lr() if hasattr(lr_schedule, "get_last_lr") else \
            [group["lr"] for group in optimizer.param_groups]
        for name, lr, group in zip(self.names, lrs, optimizer.param_groups):
            if f"lr/{name}" in values:
                continue  # SDXL's two text encoders: one name, one lr, as kohya's one group
            values[f"lr/{name}"] = float(lr)
            if "d" in group:  # D-Adaptation / Prodigy: the effective lr
                values[f"lr/d*lr/{name}"] = float(group["d"] * group["lr"])
        self.write(values, step)

    def epoch_end(self, epoch: int) -> None:
        """``epoch``: the epochs done (kohya logs the epoch average at epoch + 1 of its 0-based count)."""
        self.write({"loss/epoch_average": self.average}, epoch)
        if self.writer is not None:
            self.writer.flush()

    def validation(self, epoch: int, loss: float) -> None:
        self.write({"loss/validation/epoch_average": loss, "loss/validation/epoch_divergence": loss - self.average},
                   epoch)

    def write(self, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
