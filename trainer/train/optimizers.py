"""kohya-ss/sd-scripts' ``optimizer_type`` names (train_util.get_optimizer): where each class
lives, the package that brings it and what kohya adds to it. A name outside the table is a
``torch.optim`` class by name (``RAdam``) or any importable ``"module.Class"``
(``"pytorch_optimizer.CAME"``), as in kohya. Packages are imported only when their optimizer is
built."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ..errors import TrainerError


@dataclass(frozen=True)
class OptimizerKind:
    name: str  # kohya's spelling
    path: str  # "module.Class"
    package: str  # what pip installs it as
    fallback: str = ""  # bitsandbytes kinds: the plain kind used when bitsandbytes cannot run here
    nesterov: bool = False  # kohya's SGDNesterov(8bit): nesterov=True, momentum 0.9 unless given
    adaptive: bool = False  # D-Adaptation / Prodigy estimate the step size; lr (~1.0) scales it


_BNB, _DA, _SF = "bitsandbytes.optim.", "dadaptation.", "schedulefree."
KINDS = (
    OptimizerKind("AdamW", "torch.optim.AdamW", "torch"),
    OptimizerKind("AdamW8bit", _BNB + "AdamW8bit", "bitsandbytes", fallback="AdamW"),
    OptimizerKind("Lion", "lion_pytorch.Lion", "lion-pytorch"),
    OptimizerKind("Prodigy", "prodigyopt.Prodigy", "prodigyopt", adaptive=True),
    OptimizerKind("Adafactor", "transformers.optimization.Adafactor", "transformers"),
    OptimizerKind("SGD", "torch.optim.SGD", "torch"),
    OptimizerKind("SGDNesterov", "torch.optim.SGD", "torch", nesterov=True),
    OptimizerKind("SGDNesterov8bit", _BNB + "SGD8bit", "bitsandbytes", fallback="SGDNesterov", nesterov=True),
    OptimizerKind("Lion8bit", _BNB + "Lion8bit", "bitsandbytes", fallback="Lion"),
    OptimizerKind("PagedLion8bit", _BNB + "PagedLion8bit", "bitsandbytes", fallback="Lion"),
    OptimizerKind("PagedAdamW", _BNB + "PagedAdamW", "bitsandbytes", fallback="AdamW"),
    OptimizerKind("PagedAdamW8bit", _BNB + "PagedAdamW8bit", "bitsandbytes", fallback="AdamW"),
    OptimizerKind("PagedAdamW32bit", _BNB + "PagedAdamW32bit", "bitsandbytes", fallback="AdamW"),
    OptimizerKind("DAdaptation", _DA + "experimental.DAdaptAdamPreprint", "dadaptation", adaptive=True),
    OptimizerKind("DAdaptAdamPreprint", _DA + "experimental.DAdaptAdamPreprint", "dadaptation", adaptive=True),
    OptimizerKind("DAdaptAdaGrad", _DA + "DAdaptAdaGrad", "dadaptation", adaptive=True),
    OptimizerKind("DAdaptAdam", _DA + "DAdaptAdam", "dadaptation", adaptive=True),
    OptimizerKind("DAdaptAdan", _DA + "DAdaptAdan", "dadaptation", adaptive=True),
    OptimizerKind("DAdaptAdanIP", _DA + "experimental.DAdaptAdanIP", "dadaptation", adaptive=True),
    OptimizerKind("DAdaptLion", _DA + "DAdaptLion", "dadaptation", adaptive=True),
    OptimizerKind("DAdaptSGD", _DA + "DAdaptSGD", "dadaptation", adaptive=True),
    OptimizerKind("RAdamScheduleFree", _SF + "RAdamScheduleFree", "schedulefree"),
    OptimizerKind("AdamWScheduleFree", _SF + "AdamWScheduleFree", "schedulefree"),
    OptimizerKind("SGDScheduleFree", _SF + "SGDScheduleFree", "schedulefree"),
)
_BY_KEY = {k.name.lower(): k for k in KINDS}
# kohya lists these in a comment but builds them only by their full path
_BY_PATH_ONLY = {"ademamix8bit": _BNB + "AdEMAMix8bit", "pagedademamix8bit": _BNB + "PagedAdEMAMix8bit"}
# pip names of the modules people put in "module.Class" where they differ from the module
PACKAGES = {"pytorch_optimizer": "pytorch-optimizer", "prodigyplus": "prodigy-plus-schedule-free",
            "lion_pytorch": "lion-pytorch", "came_pytorch": "came-pytorch", "torch": "torch"}


def find_kind(name: str) -> OptimizerKind:
    """The kind ``optimizer_type`` names: a kohya name (case-insensitive, ``-``/``_`` ignored), a
    torch.optim class by name, or ``"module.Class"``; TrainerError otherwise."""
    text = (name or "AdamW").strip()
    if "." in text:
        return OptimizerKind(text, text, PACKAGES.get(text.split(".")[0], text.split(".")[0].replace("_", "-")))
    key = text.lower().replace("-", "").replace("_", "")
    if key in _BY_KEY:
        return _BY_KEY[key]
    if key in _BY_PATH_ONLY:
        raise TrainerError(f'optimizer_type "{name}" is built by its full path, as in kohya: write '
                           f'optimizer_type = "{_BY_PATH_ONLY[key]}".')
    torch_names = {n.lower(): n for n in dir(torch.optim)
                   if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)}
    if key in torch_names:
        return OptimizerKind(torch_names[key], f"torch.optim.{torch_names[key]}", "torch")
    raise TrainerError(f"optimizer_type '{name}' is not supported: use one of {', '.join(k.name for k in KINDS)}, "
                       'a torch.optim class (RAdam, NAdam ...) or an importable "module.Class".')


def load_class(kind: OptimizerKind, what: str = "optimizer_type"):
    """Import ``kind.path``; a missing package or class is a TrainerError naming what to install."""
    return import_class(kind.path, what, kind.package, kind.name)


def import_class(path: str, what: str, package: str = "", label: str = ""):
    """The class at ``path`` ("module.Class") for setting ``what``; TrainerError naming the pip
    package when its module is missing."""
    module_name, _, class_name = path.rpartition(".")
    label = label or path
    package = package or PACKAGES.get(module_name.split(".")[0], module_name.split(".")[0].replace("_", "-"))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TrainerError(f"{what} {label} needs the {package} package: pip install {package} "
                           f"({type(err).__name__}: {err}).") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise TrainerError(f"{what} {label}: {module_name} has no {class_name} (check the spelling, or update it: "
                           f"pip install -U {package}).") from None
