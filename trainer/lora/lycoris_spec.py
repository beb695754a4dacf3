"""What ``network_module = "lycoris.kohya"`` builds: LyCORIS's ``network_args`` read the way
LyCORIS's own kohya entry point (``lycoris.kohya.create_network``) reads them.

The algorithms are LyCORIS's modules (the ``lycoris-lora`` package); this file only turns a
TrainConfig into the keyword arguments they take, with LyCORIS's defaults: ``preset = full``,
``conv_dim`` / ``conv_alpha`` = network_dim / network_alpha, ``wd_on_output = True``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ..errors import TrainerError
from .targets import parse_network_args

LYCORIS_MODULE = "lycoris.kohya"
# LyCORIS algo names (and "oft", ComfyUI's name for diag-oft) -> LyCORIS's module; DoRA is any of
# them with dora_wd=True
ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr", "diag-oft": "diag-oft",
         "oft": "diag-oft"}
PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-only", "unet-transformer-only",
           "unet-convblock-only")
# LyCORIS network_args and the module keyword each becomes (None: read into the spec itself)
MODULE_ARGS = {"factor": "factor", "decompose_both": "decompose_both", "full_matrix": "full_matrix",
               "dora_wd": "weight_decompose", "wd_on_output": "wd_on_out", "use_scalar": "use_scalar",
               "constraint": "constraint", "rescaled": "rescaled", "rs_lora": "rs_lora",
               "unbalanced_factorization": "unbalanced_factorization", "block_size": "block_size"}
SPEC_ARGS = ("algo", "preset", "conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout",
             "use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp", "loraplus_lr_ratio",
             "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
REFUSED = {"train_norm": "norm layers are not trained here", "bypass_mode": "bypass mode is for quantised bases",
           "train_t5xxl": "there is no T5 here", "train_llm_adapter": "there is no LLM adapter here"}
_BOOL = ("decompose_both", "full_matrix", "dora_wd", "wd_on_output", "use_scalar", "rescaled", "rs_lora",
         "unbalanced_factorization")


@dataclass
class LycorisSpec:
    algo: str  # as given (lora, locon, loha, lokr, diag-oft, oft)
    module: str  # LyCORIS's module name (locon, loha, lokr, diag-oft)
    preset: str  # a builtin preset name or a preset .toml/.json path
    dim: int
    alpha: float
    conv_dim: int
    conv_alpha: float
    dropout: float
    rank_dropout: float
    module_dropout: float
    use_tucker: bool
    loraplus_unet: float | None
    loraplus_text_encoder: float | None
    kwargs: dict = field(default_factory=dict)  # per-module keywords (factor, weight_decompose ...)

    @property
    def dora(self) -> bool:
        return bool(self.kwargs.get("weight_decompose"))


def _bool(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def unknown_algo(algo: str) -> TrainerError:
    return TrainerError(f'network_args algo="{algo}" is not an algorithm this trainer trains: use one of '
                        f'{", ".join(ALGOS)} (DoRA: algo=lora with dora_wd=True).')


def require_lycoris() -> None:
    try:
        import lycoris  # noqa: F401
    except ImportError:
        raise TrainerError('network_module = "lycoris.kohya" needs the lycoris-lora package: '
                           "pip install -r requirements.txt (or pip install lycoris-lora).") from None


def lycoris_spec(config) -> LycorisSpec:
    """``config``'s LyCORIS network, defaults as LyCORIS's kohya entry point has them."""
    args = parse_network_args(config.network_args)
    refused = [k for k in args if k in REFUSED and _bool(args[k])]
    if refused:
        raise TrainerError(f"network_args {refused[0]}: {REFUSED[refused[0]]}; remove it.")
    unknown = [k for k in args if k not in SPEC_ARGS and k not in MODULE_ARGS and k not in REFUSED]
    if unknown:
        warnings.warn(f"note: network_args {', '.join(unknown)} are not read by lycoris.kohya here; it reads "
                      f"{', '.join(SPEC_ARGS + tuple(MODULE_ARGS))}", stacklevel=2)
    algo = (args.get("algo") or "lora").strip().lower()
    if algo not in ALGOS:
        raise unknown_algo(algo)
    preset = args.get("preset") or "full"
    if preset not in PRESETS and not preset.endswith((".toml", ".json")):
        raise TrainerError(f'network_args preset="{preset}": use one of {", ".join(PRESETS)} or a LyCORIS '
                           "preset .toml file.")
    kwargs = {}
    for key, keyword in MODULE_ARGS.items():
        if key in args:
            kwargs[keyword] = _bool(args[key]) if key in _BOOL else _number(args, key)
    if "factor" in kwargs:
        kwargs["factor"] = int(kwargs["factor"])
    if "block_size" in kwargs:
        kwargs["block_size"] = int(kwargs["block_size"])
    dim, alpha = int(config.network_dim), float(config.network_alpha)
    conv_dim = int(_number(args, "conv_dim", config.conv_dim or dim))
    conv_alpha = _number(args, "conv_alpha", config.conv_alpha if config.conv_dim else alpha)
    use_tucker = (not _bool(args.get("disable_conv_cp", "true")) or any(
        _bool(args.get(k, "false")) for k in ("use_conv_cp", "use_cp", "use_tucker")))

    def ratio(key):
        value = args.get(key, args.get("loraplus_lr_ratio"))
        return None if value is None else float(value)

    return LycorisSpec(algo, ALGOS[algo], preset, dim, alpha, conv_dim, float(conv_alpha),
                       _number(args, "dropout", config.network_dropout or 0.0),
                       _number(args, "rank_dropout", 0.0), _number(args, "module_dropout", 0.0), use_tucker,
                       ratio("loraplus_unet_lr_ratio"), ratio("loraplus_text_encoder_lr_ratio"), kwargs)


def _number(args: dict, key: str, default=None) -> float:
    if key not in args:
        return default
    try:
        return float(args[key])
    except ValueError:
        raise TrainerError(f'network_args {key}="{args[key]}" is not a number.') from None
