"""What a caller hands train() (Callbacks) and gets back (TrainResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data.dataset import Dataset
from ..lora.kohya_format import TrainedLora
from ..models.loader import LoadedModel


@dataclass
class Callbacks:
    """Hooks a UI passes in: progress per step, a stop request checked every step, log lines."""

    on_start: Callable[[int, Dataset], None] | None = None  # (total steps, dataset)
    on_step: Callable[[int, int, float], None] | None = None  # (step, total, loss)
    on_samples: Callable[[int, dict], None] | None = None  # (step, {name: png path})
    on_loss: Callable[[int, float, float], None] | None = None  # (step, loss, smoothed loss)
    # (step, {kohya's log name: value}) before on_step, e.g. scale_weight_norms' max_norm/keys_scaled
    on_metrics: Callable[[int, dict], None] | None = None
    should_stop: Callable[[], bool] | None = None
    log: Callable[[str], None] = print


@dataclass
class TrainResult:
    lora: TrainedLora | None
    model: LoadedModel  # with the trained adapter active
    losses: list[float]
    steps: int
    total_steps: int
    epochs: int
    seconds_per_step: float
    stopped: bool = False
    files: dict[str, Path] = field(default_factory=dict)
    encoder_calls: dict[str, int] = field(default_factory=dict)  # VAE / text-encoder calls made
    learning_rates: list[float] = field(default_factory=list)  # the lr each step used
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (epoch, loss)
    warnings: list[str] = field(default_factory=list)
