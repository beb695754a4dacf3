"""Optimizers under kohya-ss/sd-scripts' names and semantics.

``build_optimizer`` is kohya's ``train_util.get_optimizer``: every ``optimizer_type`` kohya
knows (the table in optimizers.py, matched case-insensitively), a torch.optim class by name, or
any importable ``"module.Class"``; ``optimizer_args`` is kohya's list of ``"key=value"`` strings
whose values are Python literals (``["weight_decay=0.01", "betas=(0.9,0.99)"]``), passed to the
class unchanged. An optional package is imported only when its optimizer is chosen, and a
missing one stops the run naming the ``pip install``. Differences from kohya, all on the side of
not crashing a run:

* The bitsandbytes kinds (AdamW8bit, Lion8bit, SGDNesterov8bit, the Paged ones) fall back to
  their plain counterpart, with a warning through ``log``, when bitsandbytes cannot run here
  (not installed, no kernel for this device/platform). Its CPU build runs them all (0.50
  measured; the Paged ones unpaged).
* ``SGD`` with ``nesterov=True`` and no momentum gets kohya's SGDNesterov momentum 0.9.

Schedule-free optimizers are left in train mode; ``evaluation_weights`` is kohya's
optimizer_eval_fn/optimizer_train_fn pair around sampling, saving and validation. The
learning-rate schedules are in lr_schedule.py.
"""

from __future__ import annotations

import ast
import contextlib
import re
from typing import Callable

import torch

from ..errors import TrainerError
from .optimizers import KINDS, OptimizerKind, find_kind, load_class

OPTIMIZERS = tuple(k.name for k in KINDS)
# bitsandbytes-only arguments, dropped when a bitsandbytes kind falls back to its plain kind
_BNB_ONLY_ARGS = ("optim_bits", "min_8bit_size", "percentile_clipping", "block_wise", "is_paged")


# -- optimizer_args -----------------------------------------------------------------------------
def parse_optimizer_args(optimizer_args, what: str = "optimizer_args") -> dict:
    """kohya's ``optimizer_args`` (and ``lr_scheduler_args``): a list of ``"key=value"`` strings
    (values are Python literals: ``0.01``, ``True``, ``(0.9, 0.99)``, ``'text'``), one string with
    several such pairs separated by spaces (how kohya_ss GUI stores them), or a dict (copied)."""
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
            raise TrainerError(f"{what} entry '{text}' is not key=value: write it like weight_decay=0.01.")
        key, value = (part.strip() for part in text.split("=", 1))
        if not key.isidentifier():
            raise TrainerError(f"{what} entry '{text}': '{key}' is not an argument name.")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if value.lower() in ("true", "false"):
                parsed[key] = value.lower() == "true"
            else:
                raise TrainerError(
                    f"{what} entry '{text}': value '{value}' is not a number, True/False, a tuple or a "
                    "quoted string (e.g. betas=(0.9,0.99) or step_rules='1:10,0.1').") from None
    return parsed


def normalize_optimizer_type(name: str) -> str:
    """The canonical spelling of an ``optimizer_type`` (kohya's for its names, the torch.optim
    class name, or the "module.Class" as given); TrainerError for an unknown one."""
    return find_kind(name).name


def _group_lrs(params_groups, lr: float) -> list[float]:
    groups = list(params_groups)
    if groups and isinstance(groups[0], dict):
        return [float(g.get("lr", lr)) for g in groups]
    return [float(lr)]


def _bnb_works(kind: OptimizerKind, device) -> str | None:
    """None when bitsandbytes' ``kind`` runs on ``device``; else the reason it does not."""
    try:
        cls = load_class(kind)
    except Exception as err:  # TrainerError, or a broken native library raising anything
        return f"bitsandbytes is not importable ({type(err).__name__}: {err})"
    try:
        # One real step on a tensor big enough for the 8-bit state (bnb keeps < 4096 in 32-bit).
        probe = torch.nn.Parameter(torch.zeros(4096, device=device))
        probe.grad = torch.ones_like(probe)
        with _quiet_paging():
            cls([probe], lr=1e-3, **({"momentum": 0.9} if kind.nesterov else {})).step()
    except Exception as err:
        return f"bitsandbytes has no {kind.name} kernel for {torch.device(device).type} here ({type(err).__name__}: {err})"
    return None


@contextlib.contextmanager
def _quiet_paging():
    """bitsandbytes warns when a Paged optimizer first steps on the CPU that it runs unpaged: the
    probe stays quiet (build_optimizer logs a note)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported")
        yield


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
    arguments. ``device`` is where the parameters live (decides whether bitsandbytes can run).
    Notes and warnings go through ``log``. A schedule-free optimizer comes back in train mode."""
    kind = find_kind(optimizer_type)
    kwargs = parse_optimizer_args(optimizer_args)
    device = torch.device(device) if device is not None else torch.device("cpu")
    params = list(params_groups)
    if kind.fallback:
        reason = _bnb_works(kind, device)
        if reason is not None:
            plain = find_kind(kind.fallback)
            log(f"warning: {kind.name} is not available ({reason}); using {plain.name} ({plain.path}) instead, "
                f"without bitsandbytes' 8-bit state or paging. Choose optimizer_type {plain.name} to silence this.")
            for key in _BNB_ONLY_ARGS:
                if kwargs.pop(key, None) is not None:
                    log(f"note: optimizer_args '{key}' only applies to bitsandbytes and was dropped.")
            kind = plain
        elif kind.name.startswith("Paged") and device.type != "cuda":
            log(f"note: {kind.name} pages its state to host memory on CUDA only; on {device.type} it runs unpaged.")
    _advise(kind, _group_lrs(params, lr), log)
    if kind.nesterov:  # kohya's SGDNesterov(8bit)
        kwargs["nesterov"] = True
    if kind.path.endswith((".SGD", ".SGD8bit")) and kwargs.get("nesterov") and not kwargs.get("momentum"):
        log("note: SGD with nesterov=True needs momentum; using momentum=0.9 (as kohya does).")
        kwargs["momentum"] = 0.9
    if kind.name == "Adafactor":
        lr = _adafactor_lr(kwargs, params, lr, log)
    if kind.name == "AdamW":
        kwargs.update(_fused_default(device, kwargs))
    cls = load_class(kind)
    try:
        optimizer = cls(params, lr=lr, **kwargs)
    except TypeError as err:
        raise TrainerError(f"optimizer_args {sorted(kwargs)} do not fit {kind.name}: {err}.") from None
    except (ValueError, NotImplementedError) as err:
        raise TrainerError(f"{kind.name}: invalid setting ({err}); check learning_rate and optimizer_args.") from None
    if is_schedule_free(optimizer):
        optimizer.train()  # kohya: train mode from the start; eval only around samples and saves
    return optimizer


def _advise(kind: OptimizerKind, lrs: list[float], log: Callable[[str], None]) -> None:
    """kohya's learning-rate hints for Lion and the step-size-estimating optimizers."""
    if kind.name in ("Lion", "Lion8bit", "PagedLion8bit") and max(lrs) >= 1e-4:
        log(f"note: Lion usually wants about 1/10 of AdamW's learning rate (got {max(lrs):g}); "
            "try 1e-5 if training diverges.")
    if kind.adaptive:
        if any(not 0.5 <= v <= 2.0 for v in lrs):
            log(f"warning: {kind.name} sets the step size itself; learning_rate (and unet_lr) should be about 1.0 "
                f"(got {', '.join(f'{v:g}' for v in lrs)}). Set them to 1.0 unless you mean to scale {kind.name}.")
        if len(set(lrs)) > 1:
            log(f"warning: {kind.name} adapts one step size for all groups; different per-group learning rates "
                "only scale it.")


def _adafactor_lr(kwargs: dict, params: list, lr: float, log: Callable[[str], None]):
    """kohya's Adafactor: relative_step=True unless optimizer_args say otherwise; then the
    learning rate is Adafactor's own (lr None, group lrs dropped) and so is the schedule."""
    if "relative_step" not in kwargs:
        kwargs["relative_step"] = True  # kohya's default (transformers' too)
    if kwargs.get("warmup_init") and not kwargs["relative_step"]:
        log("note: Adafactor warmup_init=True needs relative_step=True; turning relative_step on (as kohya does).")
        kwargs["relative_step"] = True
    if not kwargs["relative_step"]:
        return lr
    log("note: Adafactor with relative_step=True (kohya's default) computes its own learning rate: learning_rate, "
        "unet_lr and text_encoder_lr are ignored and the lr scheduler is Adafactor's. For a fixed learning rate set "
        'optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"].')
    for group in params:
        if isinstance(group, dict):
            group.pop("lr", None)
    return None


def is_schedule_free(optimizer) -> bool:
    """Schedule-free optimizers (schedulefree's, ProdigyPlusScheduleFree ...) step one sequence of
    weights and evaluate another; they say so by having train() and eval()."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


@contextlib.contextmanager
def evaluation_weights(optimizer):
    """The weights to sample, save and validate with: a schedule-free optimizer's eval mode inside
    the block (kohya's optimizer_eval_fn / optimizer_train_fn). Nests; a no-op for the others."""
    switch = is_schedule_free(optimizer) and optimizer.param_groups[0].get("train_mode", True)
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()


def start_training(optimizer) -> None:
    """Before the first step: a schedule-free optimizer in train mode (a resumed state comes back
    in the eval mode it was saved in)."""
    if is_schedule_free(optimizer):
        optimizer.train()


def finish_training(optimizer) -> None:
    """After the last step: leave the weights a schedule-free optimizer evaluates with (kohya ends
    in eval mode)."""
    if is_schedule_free(optimizer):
        optimizer.eval()
