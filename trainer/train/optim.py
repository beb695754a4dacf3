"""Optimizers and learning-rate schedules under kohya-ss/sd-scripts' names and semantics.

``build_optimizer`` mirrors kohya's ``train_util.get_optimizer``: ``optimizer_type`` is matched
case-insensitively (``AdamW8bit`` == ``adamw8bit``), ``optimizer_args`` is kohya's list of
``"key=value"`` strings whose values are Python literals (``["weight_decay=0.01",
"betas=(0.9,0.99)"]``) or an already-parsed dict, and every argument is passed through to the
optimizer class unchanged. Differences from kohya, all on the side of not crashing a run:

* ``AdamW8bit`` falls back to torch's AdamW, with a warning through ``log``, when bitsandbytes
  cannot run here (not installed, no kernel for this device/platform). Users on Windows/macOS
  without a CUDA bitsandbytes get a working run instead of an ImportError.
* ``Adafactor`` defaults to ``scale_parameter=False, relative_step=False, warmup_init=False`` (the
  settings kohya's SDXL documentation recommends for LoRA, and the only ones that honour the
  configured learning rate). kohya's code itself defaults ``relative_step=True`` when the args
  leave it out; pass ``relative_step=True`` to get that behaviour (the lr then becomes
  Adafactor's own schedule, and ``build_lr_scheduler`` returns ``AdafactorSchedule``).
* Paged* optimizers and the bitsandbytes-only 8-bit variants other than AdamW8bit raise a
  TrainerError naming a supported alternative.

``build_lr_scheduler`` is kohya's ``get_scheduler_fix`` for the diffusers schedules:
``lr_warmup_steps`` is a step count, or (a float below 1) a ratio of the total steps.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Callable, Iterable

import torch

from ..errors import TrainerError

OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Prodigy", "Adafactor", "SGD", "SGDNesterov")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")

# kohya accepts these names but they need CUDA-only code paths (paging, 8-bit kernels) or a
# package this pack does not depend on; map each to the nearest supported choice.
_UNSUPPORTED = {
    "pagedadamw8bit": "AdamW8bit",
    "pagedadamw": "AdamW",
    "pagedadamw32bit": "AdamW",
    "pagedlion8bit": "Lion",
    "lion8bit": "Lion",
    "sgdnesterov8bit": "SGDNesterov",
    "ademamix8bit": "AdamW8bit",
    "pagedademamix8bit": "AdamW8bit",
}
_SCHEDULER_ALIASES = {"cosine_with_restart": "cosine_with_restarts", "cosine_restarts": "cosine_with_restarts",
                      "constant_warmup": "constant_with_warmup", "poly": "polynomial"}


# -- optimizer_args -----------------------------------------------------------------------------
def parse_optimizer_args(optimizer_args) -> dict:
    """kohya's ``optimizer_args``: a list of ``"key=value"`` strings (values are Python literals:
    ``0.01``, ``True``, ``(0.9, 0.99)``), one string with several such pairs separated by spaces
    (how kohya_ss GUI stores them), or a dict (returned as a copy)."""
    if optimizer_args is None or optimizer_args == "" or optimizer_args == []:
        return {}
    if isinstance(optimizer_args, dict):
        return dict(optimizer_args)
    if isinstance(optimizer_args, str):
        optimizer_args = [p for p in re.split(r"\s+(?=[A-Za-z_][A-Za-z0-9_]*\s*=)", optimizer_args.strip()) if p]
    parsed = {}
    for item in optimizer_args:
        text = str(item).strip()
        if not text:
            continue
        if "=" not in text:
            raise TrainerError(f"optimizer_args entry '{text}' is not key=value: write it like weight_decay=0.01.")
        key, value = (part.strip() for part in text.split("=", 1))
        if not key.isidentifier():
            raise TrainerError(f"optimizer_args entry '{text}': '{key}' is not an argument name.")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if value.lower() in ("true", "false"):
                parsed[key] = value.lower() == "true"
            else:
                raise TrainerError(
                    f"optimizer_args entry '{text}': value '{value}' is not a number, True/False, a tuple or a "
                    "quoted string (e.g. betas=(0.9,0.99)).") from None
    return parsed


def normalize_optimizer_type(name: str) -> str:
    """The canonical spelling of a kohya optimizer name (case-insensitive); TrainerError otherwise."""
    key = (name or "AdamW").strip().lower().replace("-", "").replace("_", "")
    for canonical in OPTIMIZERS:
        if canonical.lower() == key:
            return canonical
    if key in _UNSUPPORTED:
        raise TrainerError(
            f"optimizer_type '{name}' needs CUDA-only bitsandbytes features and is not supported here: "
            f"use {_UNSUPPORTED[key]}.")
    raise TrainerError(f"optimizer_type '{name}' is not supported: use one of {', '.join(OPTIMIZERS)}.")


def _group_lrs(params_groups, lr: float) -> list[float]:
    groups = list(params_groups)
    if groups and isinstance(groups[0], dict):
        return [float(g.get("lr", lr)) for g in groups]
    return [float(lr)]


def _bnb_adamw8bit_works(device) -> str | None:
    """None when bitsandbytes' AdamW8bit runs on ``device``; else the reason it does not."""
    try:
        import bitsandbytes as bnb
    except Exception as err:  # ImportError, or a broken native library raising anything
        return f"bitsandbytes is not importable ({type(err).__name__}: {err})"
    try:
        # One real step on a tensor big enough for the 8-bit state (bnb keeps < 4096 in 32-bit).
        probe = torch.nn.Parameter(torch.zeros(4096, device=device))
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as err:
        return f"bitsandbytes has no 8-bit kernel for {torch.device(device).type} here ({type(err).__name__}: {err})"
    return None


def _fused_default(device: torch.device, kwargs: dict) -> dict:
    """torch AdamW's fused kernel (one pass over all tensors; ~2x faster than the default
    per-tensor loop on the CPU) where the device has it, unless optimizer_args choose."""
    if "fused" in kwargs or "foreach" in kwargs:
        return {}
    try:  # torch's own list (private; an older or newer torch without it keeps the default)
        from torch.optim.optimizer import _get_fused_kernels_supported_devices as supported
    except ImportError:
        return {}
    return {"fused": True} if device.type in supported() else {}


def build_optimizer(optimizer_type: str, params_groups, lr: float, optimizer_args=None,
                    device=None, log: Callable[[str], None] = print) -> torch.optim.Optimizer:
    """Build ``optimizer_type`` over ``params_groups`` (an iterable of tensors, or of param-group
    dicts that may carry their own ``lr``) with default learning rate ``lr``.

    ``optimizer_args`` (list of "key=value" or dict) is passed to the optimizer as keyword
    arguments. ``device`` is where the parameters live (used to check that 8-bit kernels run).
    ``log`` receives warnings and notes (fallbacks, unusual learning rates)."""
    name = normalize_optimizer_type(optimizer_type)
    kwargs = parse_optimizer_args(optimizer_args)
    params = list(params_groups)
    if not params:
        raise TrainerError("No trainable parameters were given to the optimizer: check network_dim and the LoRA targets.")
    lr = float(lr)
    device = torch.device(device) if device is not None else torch.device("cpu")
    lrs = _group_lrs(params, lr)

    def make(cls, **extra):
        try:
            return cls(params, **extra, **kwargs)
        except TypeError as err:
            raise TrainerError(f"optimizer_args {sorted(kwargs)} do not fit {name}: {err}.") from None
        except ValueError as err:
            raise TrainerError(f"{name}: invalid setting ({err}); check learning_rate and optimizer_args.") from None

    if name == "AdamW":
        return make(torch.optim.AdamW, lr=lr, **_fused_default(device, kwargs))

    if name == "AdamW8bit":
        reason = _bnb_adamw8bit_works(device)
        if reason is None:
            import bitsandbytes as bnb

            return make(bnb.optim.AdamW8bit, lr=lr)
        log(f"warning: AdamW8bit is not available ({reason}); using torch AdamW instead. It needs more "
            "memory for the optimizer state; choose optimizer_type AdamW to silence this warning.")
        name = "AdamW (fallback from AdamW8bit)"
        for key in ("optim_bits", "min_8bit_size", "percentile_clipping", "block_wise", "is_paged"):
            if kwargs.pop(key, None) is not None:
                log(f"note: optimizer_args '{key}' only applies to bitsandbytes and was dropped.")
        return make(torch.optim.AdamW, lr=lr, **_fused_default(device, kwargs))

    if name == "Lion":
        try:
            from lion_pytorch import Lion
        except ImportError:
            raise TrainerError("optimizer_type Lion needs the lion-pytorch package: pip install lion-pytorch "
                               "(or choose AdamW).") from None
        if max(lrs) >= 1e-4:
            log(f"note: Lion usually wants about 1/10 of AdamW's learning rate (got {max(lrs):g}); "
                "try 1e-5 if training diverges.")
        return make(Lion, lr=lr)

    if name == "Prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise TrainerError("optimizer_type Prodigy needs the prodigyopt package: pip install prodigyopt "
                               "(or choose AdamW).") from None
        off = [v for v in lrs if not 0.5 <= v <= 2.0]
        if off:
            log(f"warning: Prodigy sets the step size itself; learning_rate (and unet_lr) should be about 1.0 "
                f"(got {', '.join(f'{v:g}' for v in lrs)}). Set them to 1.0 unless you mean to scale Prodigy.")
        if len(set(lrs)) > 1:
            log("warning: Prodigy adapts one step size for all groups; different per-group learning rates "
                "only scale it.")
        return make(Prodigy, lr=lr)

    if name == "Adafactor":
        from transformers.optimization import Adafactor

        kwargs.setdefault("scale_parameter", False)
        kwargs.setdefault("relative_step", False)
        kwargs.setdefault("warmup_init", False)
        if kwargs["warmup_init"] and not kwargs["relative_step"]:
            log("note: Adafactor warmup_init=True needs relative_step=True; turning relative_step on (as kohya does).")
            kwargs["relative_step"] = True
        if kwargs["relative_step"]:
            log("note: Adafactor relative_step=True computes its own learning rate; learning_rate / unet_lr "
                "are ignored and the lr scheduler becomes Adafactor's.")
            for group in params:
                if isinstance(group, dict):
                    group.pop("lr", None)
            return make(Adafactor, lr=None)
        return make(Adafactor, lr=lr)

    # SGD / SGDNesterov (kohya's SGDNesterov forces nesterov=True and defaults momentum to 0.9)
    if name == "SGDNesterov":
        kwargs["nesterov"] = True
    if kwargs.get("nesterov") and not kwargs.get("momentum"):
        log("note: SGD with nesterov=True needs momentum; using momentum=0.9 (as kohya does).")
        kwargs["momentum"] = 0.9
    return make(torch.optim.SGD, lr=lr)


# -- lr scheduler ---------------------------------------------------------------------------------
def warmup_step_count(warmup_steps, total_steps: int) -> int:
    """kohya's lr_warmup_steps: an int is a step count; a float below 1 is a ratio of
    ``total_steps`` (0.1 of 100 steps = 10). A float >= 1 (as TOML may give) counts steps."""
    if warmup_steps is None:
        return 0
    value = float(warmup_steps)
    if value < 0 or math.isnan(value):
        raise TrainerError(f"lr_warmup_steps must be 0 or more (got {warmup_steps}).")
    if isinstance(warmup_steps, float) and value < 1:
        return int(value * total_steps)
    if value != int(value):
        raise TrainerError(f"lr_warmup_steps {warmup_steps}: give a whole number of steps or a ratio below 1 (e.g. 0.1).")
    return int(value)


def normalize_scheduler_name(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", (name or "constant").strip().lower())
    key = _SCHEDULER_ALIASES.get(key, key)
    if key.startswith("adafactor"):
        return "adafactor"
    if key not in SCHEDULERS:
        raise TrainerError(f"lr_scheduler '{name}' is not supported: use one of {', '.join(SCHEDULERS)}.")
    return key


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps, total_steps: int,
                       num_cycles: int = 1, power: float = 1.0, log: Callable[[str], None] = print):
    """A ``torch.optim.lr_scheduler.LambdaLR`` from ``diffusers.optimization.get_scheduler``.

    name: constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial
    (case-insensitive; "Cosine with Restart" as SeaArt writes it is accepted).
    warmup_steps: kohya's lr_warmup_steps (count, or ratio < 1 of ``total_steps``).
    num_cycles: kohya's lr_scheduler_num_cycles, the restarts of cosine_with_restarts (seed 000
    suggests 3-5). power: kohya's lr_scheduler_power, for polynomial.
    With Adafactor(relative_step=True) the schedule is transformers' AdafactorSchedule."""
    key = normalize_scheduler_name(name)
    total_steps = int(total_steps)
    if total_steps < 1:
        raise TrainerError(f"The lr scheduler needs at least 1 training step (got {total_steps}).")
    warmup = warmup_step_count(warmup_steps, total_steps)
    if warmup >= total_steps and key != "constant":
        raise TrainerError(f"lr_warmup_steps ({warmup}) must be below the total steps ({total_steps}): "
                           "lower it or use a ratio such as 0.1.")

    group = optimizer.param_groups[0]
    if type(optimizer).__name__ == "Adafactor" and group.get("relative_step"):
        if key not in ("adafactor", "constant"):
            log(f"note: lr_scheduler '{name}' is replaced by Adafactor's own schedule (relative_step=True).")
        if warmup:
            raise TrainerError("Adafactor with relative_step=True warms up by itself: set lr_warmup_steps to 0.")
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=0.0)
    if key == "adafactor":
        raise TrainerError("lr_scheduler 'adafactor' only works with optimizer_type Adafactor and "
                           "optimizer_args relative_step=True: choose another scheduler.")
    if key == "constant" and warmup:
        raise TrainerError(f"lr_scheduler constant ignores lr_warmup_steps ({warmup_steps}): "
                           "use constant_with_warmup, or set lr_warmup_steps to 0.")
    if key == "cosine_with_restarts" and int(num_cycles) < 1:
        raise TrainerError(f"lr_scheduler_num_cycles must be at least 1 (got {num_cycles}); SeaArt suggests 3-5.")
    if key == "polynomial" and float(power) <= 0:
        raise TrainerError(f"lr_scheduler_power must be positive (got {power}); 1.0 is linear decay.")

    from diffusers.optimization import get_scheduler

    return get_scheduler(key, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         num_cycles=int(num_cycles), power=float(power))


def lr_curve(scheduler, steps: int) -> list[float]:
    """The learning rate of the first param group at each of ``steps`` steps (advances the
    scheduler; for previews and tests, run it on a throwaway optimizer)."""
    values = []
    for _ in range(steps):
        values.append(float(scheduler.get_last_lr()[0]))
        scheduler.optimizer.step()
        scheduler.step()
    return values
