"""Learning-rate schedules: kohya-ss/sd-scripts' ``get_scheduler_fix``. transformers' schedules
(plus diffusers' piecewise_constant and Adafactor's own) with the arguments kohya gives each, or
any ``lr_scheduler_type`` class with ``lr_scheduler_args``. ``lr_warmup_steps`` /
``lr_decay_steps`` are step counts, or (a float below 1) ratios of the total steps. Like kohya,
a warmup longer than the run is run as given (with a warning)."""

from __future__ import annotations

import math
import re
from typing import Callable

import torch

from ..errors import TrainerError
from .optim import is_schedule_free, parse_optimizer_args
from .optimizers import import_class

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay", "piecewise_constant", "adafactor")
_SCHEDULER_ALIASES = {"cosine_with_restart": "cosine_with_restarts", "cosine_restarts": "cosine_with_restarts",
                      "constant_warmup": "constant_with_warmup", "poly": "polynomial"}
# transformers has these too, but kohya's get_scheduler_fix cannot call them
_SCHEDULERS_KOHYA_CANNOT = {"reduce_lr_on_plateau": "it needs a validation metric at every step",
                            "cosine_warmup_with_min_lr": "use cosine_with_min_lr", "greedy": "use linear or cosine"}

def warmup_step_count(warmup_steps, total_steps: int, what: str = "lr_warmup_steps") -> int:
    """kohya's lr_warmup_steps / lr_decay_steps: an int is a step count; a float below 1 is a ratio
    of ``total_steps`` (0.1 of 100 steps = 10). A float >= 1 (as TOML may give) counts steps."""
    if warmup_steps is None:
        return 0
    value = float(warmup_steps)
    if value < 0 or math.isnan(value):
        raise TrainerError(f"{what} must be 0 or more (got {warmup_steps}).")
    if isinstance(warmup_steps, float) and value < 1:
        return int(value * total_steps)
    if value != int(value):
        raise TrainerError(f"{what} {warmup_steps}: give a whole number of steps or a ratio below 1 (e.g. 0.1).")
    return int(value)


def normalize_scheduler_name(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", (name or "constant").strip().lower())
    key = _SCHEDULER_ALIASES.get(key, key)
    if key.startswith("adafactor"):
        return "adafactor"
    if key in _SCHEDULERS_KOHYA_CANNOT:
        raise TrainerError(f"lr_scheduler '{name}' does not run in kohya's trainer ({_SCHEDULERS_KOHYA_CANNOT[key]}): "
                           f"use one of {', '.join(SCHEDULERS)}.")
    if key not in SCHEDULERS:
        raise TrainerError(f"lr_scheduler '{name}' is not supported: use one of {', '.join(SCHEDULERS)}, "
                           'or a class with lr_scheduler_type = "module.Class".')
    return key


def schedule_for(config, optimizer: torch.optim.Optimizer, total_steps: int, log: Callable[[str], None] = print):
    """``build_lr_scheduler`` with the config's lr_* settings."""
    return build_lr_scheduler(config.lr_scheduler, optimizer, config.lr_warmup_steps, total_steps,
                              config.lr_scheduler_num_cycles, config.lr_scheduler_power, log,
                              scheduler_type=config.lr_scheduler_type, scheduler_args=config.lr_scheduler_args,
                              decay_steps=config.lr_decay_steps, timescale=config.lr_scheduler_timescale,
                              min_lr_ratio=config.lr_scheduler_min_lr_ratio,
                              initial_lr=config.unet_lr or config.learning_rate)


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps, total_steps: int,
                       num_cycles: int = 1, power: float = 1.0, log: Callable[[str], None] = print, *,
                       scheduler_type: str = "", scheduler_args=None, decay_steps=0, timescale: int | None = None,
                       min_lr_ratio: float | None = None, initial_lr: float = 0.0):
    """kohya's ``get_scheduler_fix``: a ``LambdaLR`` from transformers' ``TYPE_TO_SCHEDULER_FUNCTION``
    (diffusers' for piecewise_constant) with the arguments kohya gives each, or ``scheduler_type``
    (``lr_scheduler_type``: a torch.optim.lr_scheduler class by name, or "module.Class") built
    with ``scheduler_args`` alone.

    name: constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial |
    inverse_sqrt | cosine_with_min_lr | warmup_stable_decay | piecewise_constant | adafactor
    (case-insensitive; "Cosine with Restart" as SeaArt writes it is accepted).
    warmup_steps / decay_steps: kohya's lr_warmup_steps / lr_decay_steps (counts, or ratios < 1
    of ``total_steps``). num_cycles: restarts of cosine_with_restarts (seed 000 suggests 3-5);
    kohya halves it for cosine_with_min_lr and warmup_stable_decay. power: polynomial.
    timescale: inverse_sqrt. min_lr_ratio: cosine_with_min_lr / warmup_stable_decay floor.
    scheduler_args: kohya's lr_scheduler_args, passed to every schedule (lr_end=..., step_rules=...).
    A schedule-free optimizer keeps its learning rate (kohya's dummy scheduler); with
    Adafactor(relative_step=True) the schedule is transformers' AdafactorSchedule."""
    total_steps = int(total_steps)
    if total_steps < 1:
        raise TrainerError(f"The lr scheduler needs at least 1 training step (got {total_steps}).")
    warmup = warmup_step_count(warmup_steps, total_steps)
    decay = warmup_step_count(decay_steps, total_steps, "lr_decay_steps")
    kwargs = parse_optimizer_args(scheduler_args, "lr_scheduler_args")
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType, get_constant_schedule

    if is_schedule_free(optimizer):
        if scheduler_type or normalize_scheduler_name(name) != "constant" or warmup:
            log(f"note: {type(optimizer).__name__} is schedule-free: lr_scheduler, lr_scheduler_type and "
                "lr_warmup_steps are not used (as in kohya); warm it up with optimizer_args warmup_steps=N.")
        return get_constant_schedule(optimizer)
    if scheduler_type:
        if warmup:
            raise TrainerError(f"lr_scheduler_type {scheduler_type} takes no lr_warmup_steps (got {warmup_steps}): "
                               "set it to 0, as kohya requires, and give the class its own in lr_scheduler_args.")
        cls = (getattr(torch.optim.lr_scheduler, scheduler_type, None) if "." not in scheduler_type else None) \
            or import_class(scheduler_type if "." in scheduler_type else f"torch.optim.lr_scheduler.{scheduler_type}",
                            "lr_scheduler_type")
        return _call(cls, f"lr_scheduler_type {scheduler_type}", optimizer, **kwargs)

    key = normalize_scheduler_name(name)
    group = optimizer.param_groups[0]
    if type(optimizer).__name__ == "Adafactor" and group.get("relative_step"):
        if key not in ("adafactor", "constant"):
            log(f"note: lr_scheduler '{name}' is replaced by Adafactor's own schedule (relative_step=True).")
        if warmup:
            raise TrainerError("Adafactor with relative_step=True warms up by itself: set lr_warmup_steps to 0.")
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=float(initial_lr or 0.0))
    if key == "adafactor":
        raise TrainerError("lr_scheduler 'adafactor' only works with optimizer_type Adafactor and "
                           "optimizer_args relative_step=True: choose another scheduler.")
    if key == "piecewise_constant":  # its step_rules come in lr_scheduler_args; kohya ignores the warmup
        from diffusers.optimization import get_piecewise_constant_schedule

        if "step_rules" not in kwargs:
            raise TrainerError("lr_scheduler piecewise_constant needs its rules: lr_scheduler_args = "
                               "[\"step_rules='1:100,0.1:200,0.01'\"] (multiplier:until_step, ..., last multiplier).")
        return _call(get_piecewise_constant_schedule, "lr_scheduler piecewise_constant", optimizer, **kwargs)
    if key == "constant":
        if warmup:
            raise TrainerError(f"lr_scheduler constant ignores lr_warmup_steps ({warmup_steps}): "
                               "use constant_with_warmup, or set lr_warmup_steps to 0.")
        return _call(get_constant_schedule, "lr_scheduler constant", optimizer, **kwargs)
    if warmup >= total_steps:  # kohya runs it: the lr climbs for the whole run
        log(f"warning: lr_warmup_steps ({warmup}) is not below the run's {total_steps} steps: the learning rate "
            f"reaches about {total_steps / warmup:.0%} of its peak by the end. Lower it, or use a ratio such as 0.1.")
    if key == "cosine_with_restarts" and int(num_cycles) < 1:
        raise TrainerError(f"lr_scheduler_num_cycles must be at least 1 (got {num_cycles}); SeaArt suggests 3-5.")
    if key == "polynomial" and float(power) <= 0:
        raise TrainerError(f"lr_scheduler_power must be positive (got {power}); 1.0 is linear decay.")
    if key == "cosine_with_min_lr" and min_lr_ratio is None and not {"min_lr", "min_lr_rate"} & set(kwargs):
        raise TrainerError("lr_scheduler cosine_with_min_lr needs its floor: set lr_scheduler_min_lr_ratio (e.g. 0.1).")
    # the arguments kohya's get_scheduler_fix gives each schedule besides num_warmup_steps
    args = {"constant_with_warmup": {},
            "inverse_sqrt": {"timescale": timescale},
            "cosine_with_restarts": {"num_training_steps": total_steps, "num_cycles": int(num_cycles)},
            "polynomial": {"num_training_steps": total_steps, "power": float(power)},
            "cosine_with_min_lr": {"num_training_steps": total_steps, "num_cycles": num_cycles / 2,
                                   "min_lr_rate": min_lr_ratio},
            "warmup_stable_decay": {"num_stable_steps": total_steps - warmup - decay, "num_decay_steps": decay,
                                    "num_cycles": num_cycles / 2, "min_lr_ratio": min_lr_ratio or 0.0},
            }.get(key, {"num_training_steps": total_steps})  # linear, cosine
    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(key)]
    return _call(function, f"lr_scheduler {key}", optimizer, num_warmup_steps=warmup, **(args | kwargs))


def _call(function, what: str, optimizer, **kwargs):
    try:
        return function(optimizer, **kwargs)
    except (TypeError, ValueError) as err:
        raise TrainerError(f"{what}: {err}; check lr_scheduler_args {sorted(kwargs)}.") from None


def lr_curve(scheduler, steps: int) -> list[float]:
    """The learning rate of the first param group at each of ``steps`` steps (advances the
    scheduler; for previews and tests, run it on a throwaway optimizer)."""
    values = []
    for _ in range(steps):
        values.append(float(scheduler.get_last_lr()[0]))
        scheduler.optimizer.step()
        scheduler.step()
    return values
