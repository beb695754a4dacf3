"""The LoRA file format ComfyUI's LoraLoader, A1111 and kohya tools read.

Keys: ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``;
metadata: kohya's ``ss_*`` strings and ``modelspec.*`` in the safetensors header.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import save_safetensors
from ..errors import TrainerError
from ..models.hashing import model_hashes
from .modelspec import modelspec_metadata

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "float": torch.float32}


@dataclass
class TrainedLora:
    """A LoRA in memory: kohya-format tensors plus the metadata that goes into the file."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    # the same LoRA in diffusers/peft layout ("unet.<path>.lora_A.weight"), alpha/rank folded into
    # lora_B so any diffusers loader applies it at the trained strength; None when not known
    diffusers: dict[str, torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        downs = [v for k, v in self.tensors.items() if k.endswith("lora_down.weight")]
        return int(downs[0].shape[0]) if downs else 0


def _peft_pairs(peft_state: dict):
    """peft adapter state -> (module path, "lora_down"|"lora_up", tensor)."""
    for key, value in peft_state.items():
        path, kind, _ = key.rsplit(".", 2)
        yield path, "lora_down" if kind == "lora_A" else "lora_up", value


def to_kohya_names(peft_state: dict, name_of, alpha_of) -> dict[str, torch.Tensor]:
    """peft adapter state -> kohya keys: ``name_of(path).lora_down.weight`` / ``.lora_up.weight`` and
    ``.alpha`` = ``alpha_of(path)`` (the trained alpha, not the rank diffusers' converter writes)."""
    out = {}
    for path, kind, value in _peft_pairs(peft_state):
        name = name_of(path)
        out[f"{name}.{kind}.weight"] = value.detach().clone()
        out[f"{name}.alpha"] = torch.tensor(float(alpha_of(path)))
    return out


def peft_to_kohya(peft_state: dict, alpha: float, prefix: str = "unet", conv_modules=(),
                  conv_alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """A UNet's peft adapter state -> ``lora_unet_<diffusers path>`` keys with ``conv_alpha`` for the
    modules in ``conv_modules`` and ``alpha`` for the others."""
    convs = set(conv_modules)
    return to_kohya_names(peft_state, lambda path: f"lora_{prefix}_" + path.replace(".", "_"),
                          lambda path: conv_alpha if path in convs else alpha)


def text_encoder_to_kohya(peft_state: dict, component: str, family: str, alpha: float) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's peft adapter state -> ``lora_te(1|2)_text_model_...`` keys."""
    from .names import kohya_name

    return to_kohya_names(peft_state, lambda path: kohya_name(component, path, family), lambda path: alpha)


# what kohya keeps with no_metadata (train_util.SS_METADATA_MINIMUM_KEYS): enough to load the network
SS_MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                   "ss_network_args")


def network_args_metadata(config) -> dict[str, str]:
    """kohya's ``ss_network_args``: the network_args as given (strings), with a top-level
    conv_dim/conv_alpha written the way kohya users give them, and kohya's ``dropout``."""
    from .targets import parse_network_args

    args: dict = parse_network_args(config.network_args)
    if config.conv_dim and "conv_dim" not in args:
        args.update(conv_dim=str(config.conv_dim), conv_alpha=str(config.conv_alpha))
    if args and "dropout" not in args and not config.dim_from_weights:
        args["dropout"] = config.network_dropout or None  # kohya passes network_dropout on ("for LyCORIS")
    return args


def optimizer_metadata(config, optimizer=None) -> str:
    """kohya's ss_optimizer: the optimizer's class path, with the optimizer_args as ``(k=v,...)``;
    the configured name when no optimizer is at hand (estimates before a run)."""
    if optimizer is None:
        return config.optimizer_type
    from ..train.optim import parse_optimizer_args

    cls = type(optimizer)
    args = ",".join(f"{k}={v}" for k, v in parse_optimizer_args(config.optimizer_args).items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")


def build_metadata(config, family, dataset, steps: int, epochs: int, started_at: float,
                   buckets: dict | None = None, tensor_names=(), thumbnail=None, world: int = 1,
                   num_epochs: int | None = None, optimizer=None) -> dict[str, str]:
    """kohya's ss_* keys, modelspec.* (modelspec.py; ``thumbnail``: the image used when the config
    names none) and ours (lt_*). With no_metadata, only kohya's minimum and modelspec, as kohya."""
    width, height = config.size()
    dirs, reg_dirs = {}, {}
    for item in dataset.items:
        where = reg_dirs if item.is_reg else dirs
        entry = where.setdefault(item.folder or dataset.root.name, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    meta = {
        "ss_network_module": config.network_module,
        "ss_network_dim": str(config.network_dim),
        "ss_network_alpha": str(float(config.network_alpha)),
        "ss_base_model_version": family.base_model_version,
        "ss_sd_model_name": Path(config.pretrained_model_name_or_path).name,
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.unet_lr if config.unet_lr is not None else config.learning_rate),
        "ss_text_encoder_lr": str(config.text_encoder_lr or 0),
        "ss_network_train_unet_only": str(not config.trains_text_encoder),
        "ss_optimizer": optimizer_metadata(config, optimizer),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_max_train_steps": str(steps),
        "ss_steps": str(steps),
        "ss_epoch": str(epochs),
        "ss_num_epochs": str(num_epochs if num_epochs is not None else config.max_train_epochs),
        "ss_batch_size_per_device": str(config.train_batch_size),
        "ss_num_train_images": str(dataset.num_train_samples),
        "ss_num_reg_images": str(dataset.num_reg_images),
        "ss_prior_loss_weight": str(config.prior_loss_weight),
        "ss_resolution": f"({width}, {height})",
        "ss_seed": str(config.seed),
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(bool(config.gradient_checkpointing)),
        "ss_clip_skip": str(config.clip_skip or "None"),
        "ss_caption_extension": config.caption_extension,
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_total_batch_size": str(config.train_batch_size * config.gradient_accumulation_steps * world),
        "ss_session_id": str(int(started_at * 1e6) % 2**32),  # kohya's: which run's saves a file belongs to
        "ss_full_fp16": str(bool(config.full_fp16)),
        "ss_fp8_base": str(bool(config.fp8_base)),
        "ss_fp8_base_unet": str(bool(config.fp8_base_unet)),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency(), ensure_ascii=False),
        "ss_training_started_at": str(started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": config.output_name,
        "ss_training_comment": config.training_comment or "None",  # kohya writes str(None) when unset
        "ss_v2": "False",
        "lt_family": family.name,
        "lt_preset": config.preset or "none",
        "lt_config": config.to_toml(),
    }
    meta.update(training_args_metadata(config))
    if network_args_metadata(config):  # kohya writes it only when network_args are given
        meta["ss_network_args"] = json.dumps(network_args_metadata(config))
    meta.update(model_hashes(config.pretrained_model_name_or_path))
    # kohya writes the bucket keys with buckets off too (ss_bucket_info "null")
    meta.update(ss_enable_bucket=str(bool(buckets)), ss_bucket_info="null", ss_bucket_no_upscale=str(
        bool(config.bucket_no_upscale)), ss_min_bucket_reso=str(config.min_bucket_reso),
        ss_max_bucket_reso=str(config.max_bucket_reso))
    if buckets:
        from ..train.bucketing import metadata as bucket_metadata

        meta["ss_bucket_info"] = bucket_metadata(dataset, buckets)
    if any(item.subset is not None for item in dataset.items):  # kohya's dataset config: per dataset
        from ..data.datasets_metadata import datasets_metadata

        for key in ("ss_batch_size_per_device", "ss_resolution", "ss_enable_bucket", "ss_bucket_info",
                    "ss_min_bucket_reso", "ss_max_bucket_reso", "ss_bucket_no_upscale"):
            meta.pop(key, None)  # kohya writes these into ss_datasets, each dataset's own
        meta.update(datasets_metadata(dataset, buckets))
    if config.no_metadata:
        meta = {key: value for key, value in meta.items() if key in SS_MINIMUM_KEYS}
    return meta | modelspec_metadata(config, family, tensor_names, thumbnail)


# kohya's train_network writes these training arguments as str(value) under ss_<name>
KOHYA_ARG_KEYS = {name: name for name in (
    "gradient_accumulation_steps", "lr_warmup_steps", "network_dropout", "max_token_length", "noise_offset",
    "multires_noise_iterations", "multires_noise_discount", "adaptive_noise_scale", "zero_terminal_snr",
    "max_grad_norm", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "min_snr_gamma", "scale_weight_norms", "ip_noise_gamma", "noise_offset_random_strength",
    "ip_noise_gamma_random_strength", "loss_type", "huber_schedule", "huber_scale", "huber_c",
    "validation_split", "cache_latents", "keep_tokens", "shuffle_caption", "flip_aug", "color_aug",
    "random_crop")} | {"debiased_estimation": "debiased_estimation_loss"}


def training_args_metadata(config) -> dict[str, str]:
    """The ss_* training arguments kohya records (``str(None)`` = "None" when unset, as kohya)."""
    values = {f"ss_{key}": getattr(config, field) for key, field in KOHYA_ARG_KEYS.items()}
    values["ss_cache_latents"] = bool(config.cache_latents)
    values["ss_debiased_estimation"] = bool(config.debiased_estimation_loss)
    return {key: str(value) for key, value in values.items()}


def is_minimum(metadata: dict) -> bool:
    """Metadata as no_metadata leaves it: kohya's minimum ss_* keys and modelspec.*, nothing else."""
    return any(key in SS_MINIMUM_KEYS for key in metadata) and \
        all(key in SS_MINIMUM_KEYS or key.startswith("modelspec.") for key in metadata)


def fold_alpha(peft_state: dict, prefix: str, alpha_of) -> dict[str, torch.Tensor]:
    """peft adapter state -> diffusers layout with ``alpha_of(module path) / rank`` folded into lora_B."""
    out = {}
    for key, value in peft_state.items():
        path, kind = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        value = value.detach().clone()
        if kind == "lora_B":
            value = value * (alpha_of(path) / value.shape[1])
        out[f"{prefix}.{key}"] = value
    return out


def save_lora(lora: TrainedLora, path, precision: str = "fp16", layout: str = "kohya") -> Path:
    """Write ``lora`` as .safetensors atomically, tensors cast to ``precision`` (alphas too).
    ``layout`` kohya (ComfyUI, A1111, kohya tools) or diffusers (diffusers/peft loaders)."""
    if precision not in SAVE_DTYPES:
        raise TrainerError(f"save precision '{precision}' is not one of fp16, bf16, fp32.")
    if layout not in ("kohya", "diffusers"):
        raise TrainerError(f"LoRA layout '{layout}' is not one of kohya, diffusers.")
    if layout == "diffusers" and lora.diffusers is None:
        raise TrainerError("This LoRA has no diffusers layout (not trained here, or a LyCORIS network: LoHa, LoKr, "
                           "DoRA and OFT exist only in the kohya/LyCORIS layout): save it as kohya.")
    dtype = SAVE_DTYPES[precision]
    source = lora.tensors if layout == "kohya" else lora.diffusers
    tensors = {k: v.to(dtype) for k, v in source.items()}
    metadata = dict(lora.metadata)
    if not is_minimum(metadata):  # no_metadata: kohya's minimum only
        metadata["ss_save_precision"] = precision
    return save_safetensors(Path(path), tensors, metadata)
